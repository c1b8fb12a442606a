"""The token budget: whole samples only, dropped in the order each strategy values least, coverage recorded."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memdistill.budget import MemoryCoverage, as_ranges, fit_to_budget, resolve_max_prompt_tokens, units_to_drop
from memdistill.errors import UserError
from memdistill.prompts import FunctionCounter, Message, render_entry, teacher_messages
from memdistill.snapshot import Snapshot
from memdistill.strategies import PREAMBLE, MemoryView, StrategyParams, build_memory_plan
from tests.test_strategies import FAILED, SNAPSHOT, histories


def words(text: str) -> int:
    return len(text.split())


COUNTER = FunctionCounter(words, name="words", per_message=0)


def test_units_to_drop_by_example() -> None:
    costs = [5, 1, 4, 2]  # total 12
    assert units_to_drop(costs, 12) == 0
    assert units_to_drop(costs, 11) == 1
    assert units_to_drop(costs, 7) == 1
    assert units_to_drop(costs, 6) == 2
    assert units_to_drop(costs, 2) == 3
    assert units_to_drop(costs, 0) == 4
    assert units_to_drop(costs, -3) == 4
    assert units_to_drop([], 0) == 0


@given(st.lists(st.integers(0, 20), max_size=12), st.integers(-5, 150))
def test_units_to_drop_is_the_fewest_leading_units(costs: list[int], allowed: int) -> None:
    fitting = [k for k in range(len(costs) + 1) if sum(costs[k:]) <= allowed]
    assert units_to_drop(costs, allowed) == (fitting[0] if fitting else len(costs))


def test_auto_budget_is_the_context_minus_the_answer() -> None:
    assert resolve_max_prompt_tokens("auto", 8192, 48) == 8144
    assert resolve_max_prompt_tokens(700, None, 48) == 700
    assert resolve_max_prompt_tokens(None, None, 48) is None
    with pytest.raises(UserError, match=r"^max_prompt_tokens: 'auto' needs the teacher's context length"):
        resolve_max_prompt_tokens("auto", None, 48)
    with pytest.raises(UserError, match=r"^max_prompt_tokens: auto leaves -2 tokens"):
        resolve_max_prompt_tokens("auto", 46, 48)


def test_sample_lists_are_written_as_inclusive_runs() -> None:
    assert as_ranges([-1, 0, 1, 2, 5, 7, 8]) == [[-1, 2], [5, 5], [7, 8]]
    assert as_ranges([]) == []


@given(st.sets(st.integers(-1, 80)))
def test_runs_expand_back_to_the_numbers(numbers: set[int]) -> None:
    runs = as_ranges(sorted(numbers))
    assert [i for first, last in runs for i in range(first, last + 1)] == sorted(numbers)
    assert all(b[0] > a[1] + 1 for a, b in zip(runs, runs[1:]))  # maximal runs


def test_coverage_is_kept_over_wanted_tokens() -> None:
    assert MemoryCoverage([0, 1], [1], 40, 10).coverage == 0.25
    assert MemoryCoverage([], [], 0, 0).coverage == 1.0


# --- drop order per strategy, on the annotated history of test_strategies -----------------------------


def order(name: str, sample_idx: int, **params: object) -> list[int]:
    plan = build_memory_plan(name, SNAPSHOT, SNAPSHOT.samples[sample_idx], StrategyParams(**params), FAILED)  # type: ignore[arg-type]
    return [unit.sample_idx for unit in plan.units]


def test_drop_orders_by_example() -> None:
    assert order("exclude_current", 1) == [0, 2, 3, PREAMBLE]
    assert order("full_memory", 1) == [0, 2, 3, PREAMBLE, 1]  # its own sample last
    assert order("rolling_window", 3, window_k=100) == [PREAMBLE, 0, 1, 2]
    # failure_focus keeps samples 1 (failed), 3 and 2 for sample 0; successes go first, oldest first.
    assert order("failure_focus", 0, max_memory_samples=3) == [2, 3, 1, PREAMBLE]


# --- property: each rule holds on random snapshots and budgets ----------------------------------------


def fit(name: str, snapshot: Snapshot, failed: list[bool], sample_idx: int, params: StrategyParams, limit: int):  # type: ignore[no-untyped-def]
    lines = [render_entry(e) for e in snapshot.entries]
    tokens_before = [0, *itertools.accumulate(COUNTER.texts([line + "\n" for line in lines]))]
    observation = str(snapshot.samples[sample_idx].observation.content)

    def render(view: MemoryView) -> list[Message]:
        return teacher_messages("S", [lines[i] for i in view], observation)

    fixed = COUNTER.messages(render(MemoryView())) - words("No previous experiences.")
    plan = build_memory_plan(name, snapshot, snapshot.samples[sample_idx], params, failed)
    return plan, render, fit_to_budget(plan, render, COUNTER, tokens_before, limit, fixed)


@settings(max_examples=200, deadline=None)
@given(
    histories(),
    st.sampled_from(["exclude_current", "full_memory", "rolling_window", "failure_focus", "random_sampling"]),
    st.integers(1, 12),
    st.integers(0, 6),
    st.integers(0, 120),
    st.data(),
)
def test_budget_rules_hold_on_random_snapshots(
    history: tuple[Snapshot, list[bool]], name: str, window_k: int, max_memory_samples: int, limit: int, data: st.DataObject
) -> None:
    snapshot, failed = history
    sample_idx = data.draw(st.integers(0, len(snapshot.samples) - 1))
    params = StrategyParams(window_k=window_k, max_memory_samples=max_memory_samples)
    plan, render, fitted = fit(name, snapshot, failed, sample_idx, params, limit)
    kept = set(fitted.view)
    units = {u.sample_idx: u for u in plan.units}
    dropped = [u.sample_idx for u in plan.units[: fitted.dropped_units]]
    survivors = [u.sample_idx for u in plan.units[fitted.dropped_units :]]

    # Rule 1: whole units only, so no kept entry lacks the Observation that opens its sample.
    for unit in plan.units:
        inside = set(range(unit.start, unit.stop)) & kept
        assert inside in (set(), set(range(unit.start, unit.stop)))
    for s in snapshot.samples:
        if set(s.entry_indices) & kept:
            assert s.observation.index in kept
    assert fitted.coverage.samples_kept == sorted(survivors)
    assert fitted.coverage.tokens_kept <= fitted.coverage.tokens_wanted

    # The fewest units that fit: within the limit (or nothing left), and one fewer dropped would not fit.
    assert fitted.tokens == COUNTER.messages(render(fitted.view))
    assert fitted.tokens <= limit or not survivors
    if fitted.dropped_units:
        assert COUNTER.messages(render(plan.kept(fitted.dropped_units - 1))) > limit

    # Rule 2: what goes first is what the strategy values least.
    others_dropped = [i for i in dropped if i not in (PREAMBLE, sample_idx)]
    others_kept = [i for i in survivors if i not in (PREAMBLE, sample_idx)]
    if name in ("exclude_current", "full_memory", "rolling_window", "random_sampling") and others_dropped and others_kept:
        assert max(others_dropped) < min(others_kept)  # the oldest other samples go first
    if name == "full_memory" and sample_idx in units:
        assert sample_idx in survivors or not others_kept and PREAMBLE not in survivors
    if name == "failure_focus":
        assert not any(failed[i] for i in others_dropped) or not any(not failed[i] for i in others_kept)
    if name == "rolling_window":
        assert all(units[i].stop <= snapshot.samples[sample_idx].start for i in units)
        assert len(plan.view) <= window_k
