"""exclude_current: every entry except the sample's own (its Observation, Action, Feedback and anything between).

Valued least to most under the token budget: the other samples oldest first, then the preamble (entries
before the first Observation: a task description, agent notes); the budget keeps from the most valued end.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from memdistill.snapshots.checkpoint import Sample, Snapshot
from memdistill.snapshots.strategies.base import MemoryPlan, StrategyParams, ViewFunction, is_own, oldest_first_then, register, snapshot_units


@register
class ExcludeCurrent:
    name = "exclude_current"

    def check(self, params: StrategyParams) -> None:
        pass

    def prepare(self, snapshot: Snapshot, params: StrategyParams, failed: Sequence[bool]) -> ViewFunction:
        preamble, units = snapshot_units(snapshot)

        def plan(sample: Sample) -> tuple[MemoryPlan, ...]:
            return (oldest_first_then([u for u in units if not is_own(u, sample)], preamble),)

        return plan

    def describe(self, params: StrategyParams) -> dict[str, Any]:
        return {}
