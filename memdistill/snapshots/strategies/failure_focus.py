"""failure_focus: failed samples first, then the most recent others, within `max_memory_samples` samples.

Sample i itself is never included. Entries before the first observation (agent notes, a task
description) belong to no sample and are kept, as they are context rather than experiences. Valued least
to most under the token budget: the chosen successes (oldest first), then the failures (oldest first),
then the preamble; the budget keeps from the most valued end.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from memdistill.core.errors import UserError
from memdistill.snapshots.checkpoint import Sample, Snapshot
from memdistill.snapshots.strategies.base import MemoryPlan, StrategyParams, ViewFunction, is_own, register, snapshot_units


def rank_samples(failed: Sequence[bool]) -> list[int]:
    """Sample numbers by priority: failed ones most recent first, then the others most recent first."""
    newest_first = range(len(failed) - 1, -1, -1)
    return [i for i in newest_first if failed[i]] + [i for i in newest_first if not failed[i]]


@register
class FailureFocus:
    name = "failure_focus"

    def check(self, params: StrategyParams) -> None:
        value = params.max_memory_samples
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise UserError(f"max_memory_samples: must be an integer of at least 0, got {value!r}")

    def prepare(self, snapshot: Snapshot, params: StrategyParams, failed: Sequence[bool]) -> ViewFunction:
        # Ranked once per snapshot; each sample then takes the first max_memory_samples + 1 and skips itself.
        ranked = rank_samples(failed)
        limit = params.max_memory_samples
        preamble, units = snapshot_units(snapshot)

        def plan(sample: Sample) -> tuple[MemoryPlan, ...]:
            chosen = [i for i in ranked[: limit + 1] if not is_own(units[i], sample)][:limit]
            # Successes before failures, each oldest first (False sorts before True).
            order = sorted(chosen, key=lambda i: (failed[i], i))
            return (MemoryPlan((*(units[i] for i in order), *((preamble,) if preamble else ()))),)

        return plan

    def describe(self, params: StrategyParams) -> dict[str, Any]:
        return {"max_memory_samples": params.max_memory_samples, "failure_patterns": list(params.failure_patterns)}
