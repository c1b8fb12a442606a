"""Which prompt reuses which part of another's KV cache: pure planning over token ids, no model.

Prompts built from one memory share long token prefixes (the system prompt and the memory; only the
current observation, or the sample's own entries, differ). Sorting the prompts' token ids
lexicographically walks the prefix trie depth first, so any set of prompts sharing a prefix sits in one
contiguous run, and each prompt shares the longest available prefix with the prompt right before it.
The embedded teacher runs the prompts in that order and computes, for each one, only the tokens past
what it shares with its predecessor: the total prefill is the number of nodes of the trie.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens `a` and `b` have in common."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    differs = np.asarray(a[:n], dtype=np.int64) != np.asarray(b[:n], dtype=np.int64)
    return int(differs.argmax()) if differs.any() else n


@dataclass(frozen=True, slots=True)
class PrefixPlan:
    """The order to run prompts in and, per step, how many leading tokens come from the step before.

    `order[k]` is an index into the prompts; `reused[k]` tokens of that prompt are taken from the cache of
    prompt `order[k - 1]` (0 for the first step). A prompt's cache holds all its tokens but the last, which
    generation itself feeds, so `reused[k]` never exceeds either prompt's length minus one.
    """

    order: tuple[int, ...]
    reused: tuple[int, ...]

    def batches(self, batch_size: int) -> list[range]:
        """Consecutive steps of the order, `batch_size` at a time (positions in `order`, not prompt indices)."""
        return [range(start, min(start + batch_size, len(self.order))) for start in range(0, len(self.order), batch_size)]


def plan_prefix_reuse(prompts: Sequence[Sequence[int]]) -> PrefixPlan:
    """Order prompts so those sharing a prefix are adjacent, and count what each reuses from its predecessor.

    Identical prompts keep their input order (the sort is stable).
    """
    order = sorted(range(len(prompts)), key=lambda i: tuple(prompts[i]))
    reused = [0] * len(order)
    for k in range(1, len(order)):
        previous, current = prompts[order[k - 1]], prompts[order[k]]
        shared = common_prefix_length(previous, current)
        reused[k] = max(0, min(shared, len(previous) - 1, len(current) - 1))
    return PrefixPlan(tuple(order), tuple(reused))


def prefill_tokens(prompts: Sequence[Sequence[int]], plan: PrefixPlan) -> int:
    """Prompt tokens the model computes under `plan` (every prompt's last token included)."""
    return sum(len(prompts[i]) for i in plan.order) - sum(plan.reused)
