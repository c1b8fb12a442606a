"""full_memory: the teacher sees every entry of the snapshot, the sample's own entries included."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from memdistill.snapshot import Snapshot
from memdistill.strategies.base import MemoryView, StrategyParams, ViewFunction, register


@register
class FullMemory:
    name = "full_memory"

    def check(self, params: StrategyParams) -> None:
        pass

    def prepare(self, snapshot: Snapshot, params: StrategyParams, failed: Sequence[bool]) -> ViewFunction:
        everything = MemoryView.of([(0, len(snapshot.entries))])
        return lambda sample: everything

    def describe(self, params: StrategyParams) -> dict[str, Any]:
        return {}
