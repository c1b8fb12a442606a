"""random_sampling: `num_subsets` views per observation, each `subset_size` whole samples drawn at random.

The student then learns what the memory implies rather than what one fixed context implies. Draws come
from a generator seeded by `seed` and the observation's position, so the same inputs and params give the
same views. With the memory's own observations as targets, the sample's own entries are never drawn.
Views are distinct when the memory holds enough samples; they keep the original order unless `shuffle`.
The preamble (entries before the first Observation) is context and joins every view. Valued least to
most under the token budget: a view's samples oldest first, then the preamble.

Work per observation is proportional to `subset_size * num_subsets`, not to the memory's size: the
candidates are every sample but the observation's own, indexed in place (`OtherSamples`) rather than listed.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
from collections.abc import Iterator, Sequence
from typing import Any, overload

from memdistill.core.errors import UserError
from memdistill.snapshots.checkpoint import Sample, Snapshot
from memdistill.snapshots.strategies.base import MemoryPlan, StrategyParams, ViewFunction, oldest_first_then, register, snapshot_units

log = logging.getLogger(__name__)

# Draws tried per wanted view before settling for repeats (only when few distinct subsets exist).
ATTEMPTS_PER_VIEW = 20


class OtherSamples(Sequence[int]):
    """Sample numbers 0..count-1 without `own` (None: all of them), in order, without building the list.

    `random.sample` draws from any sequence by index, so drawing from this gives exactly what drawing from
    the equal list gives, at the cost of the draw instead of the memory's size.
    """

    def __init__(self, count: int, own: int | None) -> None:
        self.count = count
        self.own = own
        self.size = count - (own is not None)

    def __len__(self) -> int:
        return self.size

    @overload
    def __getitem__(self, index: int) -> int: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[int]: ...
    def __getitem__(self, index: int | slice) -> int | Sequence[int]:
        if isinstance(index, slice):
            return list(self)[index]
        if index < 0:
            index += self.size
        if not 0 <= index < self.size:
            raise IndexError(index)
        return index + 1 if self.own is not None and index >= self.own else index

    def __iter__(self) -> Iterator[int]:
        if self.own is None:
            return iter(range(self.count))
        return itertools.chain(range(self.own), range(self.own + 1, self.count))


def draw_subsets(candidates: Sequence[int], size: int, count: int, rng: random.Random) -> list[tuple[int, ...]]:
    """`count` subsets of `min(size, len(candidates))` candidates, distinct while the candidates allow.

    Each subset is returned in the order it was drawn (the shuffle order); sort it for the original order.
    """
    size = min(size, len(candidates))
    possible = math.comb(len(candidates), size)
    subsets: list[tuple[int, ...]] = []
    seen: set[frozenset[int]] = set()
    for _ in range(count * ATTEMPTS_PER_VIEW):
        if len(subsets) == count:
            break
        subset = tuple(rng.sample(candidates, size))
        key = frozenset(subset)
        if key in seen and len(seen) < possible:
            continue
        seen.add(key)
        subsets.append(subset)
    while len(subsets) < count:  # a tiny memory: repeat the views there are
        subsets.append(subsets[len(subsets) % max(1, len(seen))] if subsets else ())
    return subsets


@register
class RandomSampling:
    name = "random_sampling"

    def check(self, params: StrategyParams) -> None:
        for name in ("subset_size", "num_subsets"):
            value = getattr(params, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"{name}: must be an integer of at least 1, got {value!r}")
        if not isinstance(params.shuffle, bool):
            raise UserError(f"shuffle: expected true or false, got {params.shuffle!r}")

    def prepare(self, snapshot: Snapshot, params: StrategyParams, failed: Sequence[bool]) -> ViewFunction:
        preamble, units = snapshot_units(snapshot)
        own_at = {u.start: u.sample_idx for u in units}
        warned = False

        def plans(sample: Sample) -> tuple[MemoryPlan, ...]:
            nonlocal warned
            # An observation from outside the memory (an empty range) owns no sample.
            own = own_at.get(sample.start) if sample.stop > sample.start else None
            candidates = OtherSamples(len(units), own)
            if params.subset_size > len(candidates) and not warned:
                warned = True
                log.warning(
                    "random_sampling: subset_size %d is more than the %d samples of the memory an observation can draw "
                    "from (its own is never drawn); each view holds those %d",
                    params.subset_size, len(candidates), len(candidates),
                )
            # One generator per observation, keyed by its position: rows never depend on which others are selected.
            rng = random.Random(f"random_sampling:{params.seed}:{sample.start}:{sample.sample_idx}")
            out = []
            for subset in draw_subsets(candidates, params.subset_size, params.num_subsets, rng):
                plan = oldest_first_then([units[i] for i in subset], preamble)
                if params.shuffle:
                    shown = ((preamble.sample_idx,) if preamble else ()) + subset
                    plan = MemoryPlan(plan.units, shown)
                out.append(plan)
            return tuple(out)

        return plans

    def describe(self, params: StrategyParams) -> dict[str, Any]:
        return {"subset_size": params.subset_size, "num_subsets": params.num_subsets, "shuffle": params.shuffle, "seed": params.seed}
