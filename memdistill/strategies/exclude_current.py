"""exclude_current: every entry except the sample's own (its Observation, Action, Feedback and anything between)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from memdistill.snapshot import Snapshot
from memdistill.strategies.base import MemoryView, StrategyParams, ViewFunction, register


@register
class ExcludeCurrent:
    name = "exclude_current"

    def check(self, params: StrategyParams) -> None:
        pass

    def prepare(self, snapshot: Snapshot, params: StrategyParams, failed: Sequence[bool]) -> ViewFunction:
        total = len(snapshot.entries)
        return lambda sample: MemoryView.of([(0, sample.start), (sample.stop, total)])

    def describe(self, params: StrategyParams) -> dict[str, Any]:
        return {}
