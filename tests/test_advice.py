"""Advice that fits the settings: the snapshots coverage warning and the stats summary never tell a run to do
what it already does (memdistill/snapshots/advice.py)."""

from __future__ import annotations

import pytest

from memdistill.snapshots.advice import budget_advice, smaller_memory_advice
from memdistill.snapshots.rows import RowOptions, SnapshotsSummary, coverage_warning
from memdistill.snapshots.strategies import StrategyParams, strategy_names

PARAMS = StrategyParams(window_k=12, max_memory_samples=8, subset_size=4)


def poorly_covered(strategy: str, max_prompt_tokens: int | str | None) -> str:
    summary = SnapshotsSummary(rows=4, max_prompt_tokens=900, low_coverage=3, coverages=[0.1, 0.2, 0.3, 1.0])
    warning = coverage_warning(summary, RowOptions(strategy, PARAMS), max_prompt_tokens)
    assert warning is not None
    return warning


@pytest.mark.parametrize("strategy", strategy_names())
@pytest.mark.parametrize("max_prompt_tokens", ["auto", 900])
def test_the_coverage_warning_never_advises_the_current_settings(strategy: str, max_prompt_tokens: int | str) -> None:
    warning = poorly_covered(strategy, max_prompt_tokens)
    assert warning.startswith(f"3 of 4 samples kept less than half of the memory {strategy} wanted")
    advice = warning.split(": ", 1)[1]
    assert f"({strategy}" not in advice and f", {strategy})" not in advice
    if max_prompt_tokens == "auto":
        assert "set it to auto" not in advice and "already auto" in advice
    else:
        assert "raise max_prompt_tokens (now 900) or set it to auto" in advice


@pytest.mark.parametrize(("strategy", "advice"), [
    ("rolling_window", "lower window_k (now 12)"),
    ("failure_focus", "lower max_memory_samples (now 8)"),
    ("random_sampling", "lower subset_size (now 4)"),
    ("exclude_current", "choose a strategy that shows a smaller memory (rolling_window, failure_focus)"),
    ("full_memory", "choose a strategy that shows a smaller memory (rolling_window, failure_focus)"),
])  # fmt: skip
def test_a_smaller_memory_is_asked_of_the_strategy_in_use(strategy: str, advice: str) -> None:
    described = {"window_k": 12, "max_memory_samples": 8, "subset_size": 4}
    assert smaller_memory_advice(strategy, described) == advice
    # Without its parameter recorded, a strategy is never told to become itself.
    assert strategy not in smaller_memory_advice(strategy, {})


def test_no_budget_advice_asks_for_what_is_set() -> None:
    assert "set it to auto" not in budget_advice("auto")
    assert "now 512" in budget_advice(512) and "set it to auto" in budget_advice(512)


def test_no_warning_when_every_sample_is_covered() -> None:
    assert coverage_warning(SnapshotsSummary(rows=2, coverages=[1.0, 0.9]), RowOptions("exclude_current", PARAMS), "auto") is None
