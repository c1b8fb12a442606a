"""The strategy interface and registry."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from memdistill.errors import UserError
from memdistill.feedback import DEFAULT_FAILURE_PATTERNS
from memdistill.snapshot import Sample, Snapshot

MemoryView = tuple[int, ...]
"""Indices of the snapshot entries the teacher sees, in their original order."""


@dataclass(frozen=True, slots=True)
class StrategyParams:
    window_k: int = 12
    max_memory_samples: int = 8
    failure_patterns: Sequence[str] = field(default=DEFAULT_FAILURE_PATTERNS)


Strategy = Callable[[Snapshot, Sample, StrategyParams, Sequence[bool]], MemoryView]
"""(snapshot, sample, params, failed flag per sample) -> memory view."""

_REGISTRY: dict[str, Strategy] = {}


def register(name: str) -> Callable[[Strategy], Strategy]:
    def decorate(function: Strategy) -> Strategy:
        _REGISTRY[name] = function
        return function

    return decorate


def strategy_names() -> list[str]:
    return sorted(_REGISTRY)


def get_strategy(name: str) -> Strategy:
    if name not in _REGISTRY:
        raise UserError(f"strategy: unknown strategy '{name}'; expected one of {', '.join(strategy_names())}")
    return _REGISTRY[name]


def build_memory_view(
    name: str, snapshot: Snapshot, sample: Sample, params: StrategyParams, failed: Sequence[bool]
) -> MemoryView:
    view = get_strategy(name)(snapshot, sample, params, failed)
    return tuple(sorted(view))
