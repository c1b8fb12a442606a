"""rolling_window: the last `window_k` entries before the sample's observation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from memdistill.errors import UserError
from memdistill.snapshot import Snapshot
from memdistill.strategies.base import MemoryView, StrategyParams, ViewFunction, register


@register
class RollingWindow:
    name = "rolling_window"

    def check(self, params: StrategyParams) -> None:
        if isinstance(params.window_k, bool) or not isinstance(params.window_k, int) or params.window_k < 1:
            raise UserError(f"window_k: must be an integer of at least 1, got {params.window_k!r}")

    def prepare(self, snapshot: Snapshot, params: StrategyParams, failed: Sequence[bool]) -> ViewFunction:
        window = params.window_k
        return lambda sample: MemoryView.of([(max(0, sample.start - window), sample.start)])

    def describe(self, params: StrategyParams) -> dict[str, Any]:
        return {"window_k": params.window_k}
