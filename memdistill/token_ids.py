"""Recovering exact vocabulary ids from the token strings a teacher server returns."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

from memdistill.logprobs import MISSING_ID

TOKEN_ID_PREFIX = re.compile(r"^token_id:(-?\d+)$")


@functools.lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """The byte-level BPE alphabet (GPT-2 style): every byte maps to one printable character."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {byte: chr(code) for byte, code in zip(printable, codes)}


class TokenIdResolver:
    """Maps token strings to ids using one tokenizer; memoised, since a dataset repeats its tokens."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.vocab: dict[str, int] = tokenizer.get_vocab()
        self.vocab_size = max(self.vocab.values()) + 1 if self.vocab else 0
        self._bytes_table = byte_to_unicode()
        self._memo: dict[str, int] = {}

    def from_bytes(self, raw: Sequence[int]) -> int:
        key = "".join(self._bytes_table[b] for b in raw if 0 <= b < 256)
        return self.vocab.get(key, MISSING_ID)

    def resolve(self, token: str | None, token_bytes: Sequence[int] | None = None) -> int:
        """Exact id for a token string: `token_id:N`, a vocabulary entry, its bytes, or a one-id encoding."""
        if token is None:
            return self.from_bytes(token_bytes) if token_bytes else MISSING_ID
        cached = self._memo.get(token)
        if cached is not None:
            return cached
        resolved = self._resolve_uncached(token, token_bytes)
        # Only memoise answers that did not depend on the bytes field.
        if resolved != MISSING_ID or not token_bytes:
            self._memo[token] = resolved
        return resolved

    def _resolve_uncached(self, token: str, token_bytes: Sequence[int] | None) -> int:
        match = TOKEN_ID_PREFIX.match(token)
        if match:
            value = int(match.group(1))
            return value if 0 <= value < max(self.vocab_size, len(self.tokenizer)) else MISSING_ID
        if token in self.vocab:
            return self.vocab[token]
        if token_bytes:
            found = self.from_bytes(token_bytes)
            if found != MISSING_ID:
                return found
        found = self.from_bytes(token.encode("utf-8"))
        if found != MISSING_ID:
            return found
        encoded = self.tokenizer.encode(token, add_special_tokens=False)
        return encoded[0] if len(encoded) == 1 else MISSING_ID
