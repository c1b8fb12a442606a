"""rolling_window: the last `window_k` entries before the sample's observation, whole samples only.

A sample that starts before the window is left out entirely (never a memory opening with an ACTION
whose OBSERVATION was cut), so the view holds at most `window_k` entries. The token budget keeps the
window's newest samples first, skipping one that cannot fit (a huge log) for the older ones that can.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from memdistill.core.errors import UserError
from memdistill.snapshots.checkpoint import Sample, Snapshot
from memdistill.snapshots.strategies.base import MemoryPlan, StrategyParams, ViewFunction, oldest_first_then, register, snapshot_units


@register
class RollingWindow:
    name = "rolling_window"

    def check(self, params: StrategyParams) -> None:
        if isinstance(params.window_k, bool) or not isinstance(params.window_k, int) or params.window_k < 1:
            raise UserError(f"window_k: must be an integer of at least 1, got {params.window_k!r}")

    def prepare(self, snapshot: Snapshot, params: StrategyParams, failed: Sequence[bool]) -> ViewFunction:
        window = params.window_k
        preamble, units = snapshot_units(snapshot)
        candidates = [u for u in (preamble, *units) if u is not None]

        def plan(sample: Sample) -> tuple[MemoryPlan, ...]:
            # An observation from outside the memory starts after its last entry: the window ends there.
            first = sample.start - window
            return (oldest_first_then([u for u in candidates if u.start >= first and u.stop <= sample.start]),)

        return plan

    def describe(self, params: StrategyParams) -> dict[str, Any]:
        return {"window_k": params.window_k}
