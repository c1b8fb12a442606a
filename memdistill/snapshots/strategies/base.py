"""The strategy interface, the memory view it returns, and the registry that selects a strategy by name."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from memdistill.core.errors import UserError
from memdistill.snapshots.checkpoint import Sample, Snapshot
from memdistill.snapshots.feedback import DEFAULT_FAILURE_PATTERNS


@dataclass(frozen=True, slots=True)
class MemoryView:
    """The snapshot entries the teacher sees for one sample, in their original order.

    Stored as sorted, disjoint, non-adjacent half-open ranges `[start, stop)` of entry indices, so a view
    of a 20,000-entry memory costs a few integers and budget arithmetic runs per range, not per entry.
    """

    ranges: tuple[tuple[int, int], ...] = ()

    @classmethod
    def of(cls, ranges: Iterable[tuple[int, int]]) -> MemoryView:
        """Normalise any ranges: drop empty ones, sort, merge overlapping or touching ones."""
        merged: list[list[int]] = []
        for start, stop in sorted((a, b) for a, b in ranges if b > a):
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], stop)
            else:
                merged.append([start, stop])
        return cls(tuple((a, b) for a, b in merged))

    @classmethod
    def from_indices(cls, indices: Iterable[int]) -> MemoryView:
        return cls.of((i, i + 1) for i in indices)

    def __iter__(self) -> Iterator[int]:
        for start, stop in self.ranges:
            yield from range(start, stop)

    def __len__(self) -> int:
        return sum(stop - start for start, stop in self.ranges)

    def __contains__(self, index: object) -> bool:
        return any(start <= index < stop for start, stop in self.ranges)  # type: ignore[operator]

    def indices(self) -> list[int]:
        return list(self)

    def without_oldest(self, count: int) -> MemoryView:
        """The view with its first `count` entries removed."""
        kept: list[tuple[int, int]] = []
        for start, stop in self.ranges:
            if count >= stop - start:
                count -= stop - start
                continue
            kept.append((start + count, stop))
            count = 0
        return MemoryView(tuple(kept))

    def inclusive_ranges(self) -> list[list[int]]:
        """[[first, last], ...] with both ends included: the form written to prompts.jsonl metadata."""
        return [[start, stop - 1] for start, stop in self.ranges]


PREAMBLE = -1
"""Label of the unit made of the entries before the first Observation (they belong to no sample)."""


@dataclass(frozen=True, slots=True)
class MemoryUnit:
    """What the token budget keeps or drops whole: one sample's entries, or the preamble (`sample_idx` PREAMBLE)."""

    sample_idx: int
    start: int
    stop: int


@dataclass(frozen=True, slots=True)
class MemoryPlan:
    """A strategy's memory for one sample: whole units, the one the strategy values least first. The token
    budget keeps them from the other end while they fit; the teacher sees the kept units in their original order."""

    units: tuple[MemoryUnit, ...] = ()
    shown_order: tuple[int, ...] | None = None
    """Sample numbers in the order the teacher sees them (random_sampling with shuffle); None = original order."""

    @property
    def view(self) -> MemoryView:
        return self.kept()

    def _kept_units(self, keep: Sequence[bool] | None) -> list[MemoryUnit]:
        return list(self.units) if keep is None else [u for u, kept in zip(self.units, keep) if kept]

    def kept(self, keep: Sequence[bool] | None = None) -> MemoryView:
        """The view of the units `keep` marks (one flag per unit, in plan order; None = every unit)."""
        kept = self._kept_units(keep)
        if self.shown_order is None:
            return MemoryView.of((u.start, u.stop) for u in kept)
        position = {sample_idx: rank for rank, sample_idx in enumerate(self.shown_order)}
        return MemoryView(tuple((u.start, u.stop) for u in sorted(kept, key=lambda u: position[u.sample_idx])))

    def samples(self, keep: Sequence[bool] | None = None) -> list[int]:
        """The kept units' sample numbers in original order (PREAMBLE first when kept)."""
        return sorted(u.sample_idx for u in self._kept_units(keep))


def snapshot_units(snapshot: Snapshot) -> tuple[MemoryUnit | None, tuple[MemoryUnit, ...]]:
    """The snapshot's preamble unit (None when the first entry is an Observation) and one unit per sample."""
    first = snapshot.samples[0].start
    preamble = MemoryUnit(PREAMBLE, 0, first) if first > 0 else None
    return preamble, tuple(MemoryUnit(s.sample_idx, s.start, s.stop) for s in snapshot.samples)


def is_own(unit: MemoryUnit, sample: Sample) -> bool:
    """Whether `unit` is the sample's own entries; an observation from outside the memory owns none."""
    return unit.sample_idx != PREAMBLE and unit.start == sample.start and sample.stop > sample.start


def oldest_first_then(units: Sequence[MemoryUnit], *last: MemoryUnit | None) -> MemoryPlan:
    """A plan dropping `units` oldest first, then each of `last` in the order given (None skipped)."""
    ordered = sorted(units, key=lambda u: u.start)
    return MemoryPlan((*ordered, *(u for u in last if u is not None)))


@dataclass(frozen=True, slots=True)
class StrategyParams:
    window_k: int = 12
    max_memory_samples: int = 8
    failure_patterns: Sequence[str] = field(default=DEFAULT_FAILURE_PATTERNS)
    subset_size: int = 4
    num_subsets: int = 3
    shuffle: bool = False
    seed: int = 0


ViewFunction = Callable[[Sample], tuple[MemoryPlan, ...]]


class Strategy(Protocol):
    """A memory-formation strategy.

    `check` rejects bad parameters before any work; `prepare` does the per-snapshot work once (ranking,
    say) and returns the function that gives sample i its plans, one per memory view (whole units valued
    least first; every strategy but random_sampling gives one view); `describe` lists the parameters that
    shaped the views, for the output metadata.
    """

    name: ClassVar[str]

    def check(self, params: StrategyParams) -> None: ...

    def prepare(self, snapshot: Snapshot, params: StrategyParams, failed: Sequence[bool]) -> ViewFunction: ...

    def describe(self, params: StrategyParams) -> dict[str, Any]: ...


_REGISTRY: dict[str, Strategy] = {}


def register(cls: type) -> type:
    """Class decorator: make the strategy selectable by its `name`."""
    _REGISTRY[cls.name] = cls()
    return cls


def strategy_names() -> list[str]:
    return sorted(_REGISTRY)


def get_strategy(name: str) -> Strategy:
    if name not in _REGISTRY:
        raise UserError(f"strategy: unknown strategy '{name}'; expected one of {', '.join(strategy_names())}")
    return _REGISTRY[name]


def build_memory_plan(
    name: str, snapshot: Snapshot, sample: Sample, params: StrategyParams, failed: Sequence[bool]
) -> MemoryPlan:
    """One sample's (first) plan; convenient for tests and single samples (the stage prepares once per snapshot)."""
    return build_memory_plans(name, snapshot, sample, params, failed)[0]


def build_memory_plans(
    name: str, snapshot: Snapshot, sample: Sample, params: StrategyParams, failed: Sequence[bool]
) -> tuple[MemoryPlan, ...]:
    """Every memory view's plan for one sample."""
    strategy = get_strategy(name)
    strategy.check(params)
    return strategy.prepare(snapshot, params, failed)(sample)


def build_memory_view(
    name: str, snapshot: Snapshot, sample: Sample, params: StrategyParams, failed: Sequence[bool]
) -> MemoryView:
    """One sample's view before any token budget."""
    return build_memory_plan(name, snapshot, sample, params, failed).view
