"""full_memory: the teacher sees every entry of the snapshot, the sample's own entries included.

Valued least to most under the token budget: the other samples oldest first, then the preamble, then the
sample's own entries, which make this strategy differ from exclude_current; the budget keeps from the most
valued end, and a sample whose own entries cannot fit still gets the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from memdistill.snapshots.checkpoint import Sample, Snapshot
from memdistill.snapshots.strategies.base import MemoryPlan, StrategyParams, ViewFunction, is_own, oldest_first_then, register, snapshot_units


@register
class FullMemory:
    name = "full_memory"

    def check(self, params: StrategyParams) -> None:
        pass

    def prepare(self, snapshot: Snapshot, params: StrategyParams, failed: Sequence[bool]) -> ViewFunction:
        preamble, units = snapshot_units(snapshot)

        def plan(sample: Sample) -> tuple[MemoryPlan, ...]:
            own = next((u for u in units if is_own(u, sample)), None)
            others = [u for u in units if u is not own]
            return (oldest_first_then(others, preamble, own),)

        return plan

    def describe(self, params: StrategyParams) -> dict[str, Any]:
        return {}
