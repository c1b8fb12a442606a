"""Key/value caches for prefix reuse, built on transformers' own `DynamicCache` (no attention code here).

A `PrefixCache` is one prompt's keys and values; `BatchCache` lays several prompts' caches side by side,
right-aligned (left padding, as batched generation expects), and hands them to `model.generate` as a
`DynamicCache`.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache


@dataclass(frozen=True, slots=True)
class PrefixCache:
    """One prompt's cache: per layer (keys, values), each [1, kv_heads, length, head_dim]."""

    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]

    @property
    def length(self) -> int:
        return self.layers[0][0].shape[-2]

    def slice(self, length: int) -> PrefixCache:
        """The cache of the first `length` tokens (views, no copy): a causal model's keys and values at a
        position depend only on the tokens up to it, so they are those of any prompt sharing that prefix."""
        return PrefixCache(tuple((k[..., :length, :], v[..., :length, :]) for k, v in self.layers))

    def clone(self) -> PrefixCache:
        return PrefixCache(tuple((k.clone(), v.clone()) for k, v in self.layers))

    def to_dynamic_cache(self, config: Any) -> DynamicCache:
        """A fresh `DynamicCache` holding copies of these tensors, ready to be extended by a forward pass."""
        return DynamicCache(ddp_cache_data=self.layers, config=config)

    @classmethod
    def from_dynamic_cache(cls, cache: DynamicCache) -> PrefixCache:
        return cls(tuple((layer.keys, layer.values) for layer in cache.layers))


class BatchCache:
    """Left-padded keys and values of a batch of prompts: row r's cache ends at column `width`.

    Padded columns stay zero and are masked out by the attention mask generation receives.
    """

    def __init__(self, config: Any, rows: int, width: int, dtype: torch.dtype) -> None:
        text = config.get_text_config(decoder=True)
        heads = text.num_key_value_heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        shape = (rows, heads, width, head_dim)
        self.config = config
        self.width = width
        self.layers = [(torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype))
                       for _ in range(text.num_hidden_layers)]

    def put(self, row: int, cache: PrefixCache) -> PrefixCache:
        """Store one prompt's cache in `row`; returns a view of it there."""
        start = self.width - cache.length
        for (keys, values), (k, v) in zip(self.layers, cache.layers):
            keys[row, :, start:] = k[0]
            values[row, :, start:] = v[0]
        return self.row(row, cache.length)

    def row(self, row: int, length: int) -> PrefixCache:
        start = self.width - length
        return PrefixCache(tuple((k[row : row + 1, :, start:], v[row : row + 1, :, start:]) for k, v in self.layers))

    def into_dynamic_cache(self) -> DynamicCache:
        """The batch as a `DynamicCache`; this object is emptied layer by layer, so the copy never doubles memory."""

        def drain() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            while self.layers:
                yield self.layers.pop(0)

        return DynamicCache(ddp_cache_data=drain(), config=self.config)


def cache_argument(model: Any) -> str:
    """The keyword `model.forward` takes its cache by: transformers 5 renamed `past_key_values` to `cache`."""
    return "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"
