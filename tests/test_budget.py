"""The token budget: whole samples only, kept in the order each strategy values most while they fit (one that
cannot fit is skipped and the next tried), coverage recorded; over-long observations cut from the middle."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memdistill.core.errors import UserError
from memdistill.snapshots.budget import (
    CUT_MARKER,
    MemoryCoverage,
    as_ranges,
    cut_from_middle,
    fit_to_budget,
    keep_by_priority,
    resolve_max_prompt_tokens,
)
from memdistill.snapshots.checkpoint import Snapshot
from memdistill.snapshots.prompts import FunctionCounter, Message, render_entry, teacher_messages
from memdistill.snapshots.strategies import PREAMBLE, MemoryPlan, MemoryView, StrategyParams, build_memory_plan
from tests.test_strategies import FAILED, SNAPSHOT, histories, make_snapshot


def words(text: str) -> int:
    return len(text.split())


COUNTER = FunctionCounter(words, name="words", per_message=0)


def test_keep_by_priority_by_example() -> None:
    costs = [5, 1, 4, 2]  # drop order: the last is valued most
    assert keep_by_priority(costs, 12) == [True, True, True, True]
    assert keep_by_priority(costs, 11) == [False, True, True, True]
    assert keep_by_priority(costs, 7) == [False, True, True, True]
    assert keep_by_priority(costs, 6) == [False, False, True, True]
    # 4 does not fit in the 3 left after 2: skipped, and 1 below it still kept.
    assert keep_by_priority(costs, 5) == [False, True, False, True]
    assert keep_by_priority(costs, 1) == [False, True, False, False]
    assert keep_by_priority(costs, 0) == [False, False, False, False]
    assert keep_by_priority(costs, -3) == [False, False, False, False]
    assert keep_by_priority([], 0) == []
    assert keep_by_priority([0, 7], 3) == [True, False]  # a unit of no tokens always fits


@given(st.lists(st.integers(0, 20), max_size=12), st.integers(-5, 150))
def test_keep_by_priority_skips_only_what_cannot_fit(costs: list[int], space: int) -> None:
    keep = keep_by_priority(costs, space)
    left = space - sum(c for c, k in zip(costs, keep) if k)
    assert left >= 0 or not any(keep)
    # No dropped unit would fit in the space left.
    assert all(cost > left for cost, kept in zip(costs, keep) if not kept)
    # Priority: walking from the most valued, each unit is kept exactly when it fits in what the ones before left.
    remaining = space
    for position in range(len(costs) - 1, -1, -1):
        assert keep[position] == (costs[position] <= remaining)
        remaining -= costs[position] if keep[position] else 0


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


def fit(name: str, snapshot: Snapshot, failed: list[bool], sample_idx: int, params: StrategyParams, limit: int | None):  # type: ignore[no-untyped-def]
    lines = [render_entry(e) for e in snapshot.entries]
    tokens_before = [0, *itertools.accumulate(COUNTER.texts([line + "\n" for line in lines]))]
    observation = str(snapshot.samples[sample_idx].observation.content)

    def render(view: MemoryView) -> list[Message]:
        return teacher_messages("S", [lines[i] for i in view], observation)

    fixed = COUNTER.messages(render(MemoryView())) - words("No previous experiences.")
    plan = build_memory_plan(name, snapshot, snapshot.samples[sample_idx], params, failed)
    return plan, render, fit_to_budget(plan, render, COUNTER, tokens_before, limit, fixed)


def with_unit(keep: tuple[bool, ...], position: int) -> list[bool]:
    wider = list(keep)
    wider[position] = True
    return wider


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
    survivors = [u.sample_idx for u, k in zip(plan.units, fitted.keep) if k]

    # Rule 1: whole units only, so no kept entry lacks the Observation that opens its sample.
    for unit in plan.units:
        inside = set(range(unit.start, unit.stop)) & kept
        assert inside in (set(), set(range(unit.start, unit.stop)))
    for s in snapshot.samples:
        if set(s.entry_indices) & kept:
            assert s.observation.index in kept
    # Kept is a part of what the strategy wanted, shown in the memory's order.
    assert set(survivors) <= set(plan.samples()) and fitted.coverage.samples_kept == sorted(survivors)
    assert fitted.view.indices() == sorted(fitted.view.indices())
    assert fitted.coverage.tokens_kept <= fitted.coverage.tokens_wanted
    assert fitted.dropped_units == len(plan.units) - len(survivors)

    # Within the limit (or nothing kept), and the count is the rendered prompt's.
    assert fitted.tokens == COUNTER.messages(render(fitted.view))
    assert fitted.tokens <= limit or not survivors

    # Rule 2: no dropped unit would fit in the space left.
    for position, unit_kept in enumerate(fitted.keep):
        if not unit_kept:
            assert COUNTER.messages(render(plan.kept(with_unit(fitted.keep, position)))) > limit

    # Rule 3: priority. Walking from the unit the strategy values most, each is kept exactly when the prompt
    # with it and the units kept before it fits: a unit is skipped only because it did not fit.
    walk = [False] * len(plan.units)
    for position in range(len(plan.units) - 1, -1, -1):
        fits = COUNTER.messages(render(plan.kept(with_unit(tuple(walk), position)))) <= limit
        assert fitted.keep[position] == fits
        walk[position] = fits
    if name == "rolling_window":
        assert all(unit.stop <= snapshot.samples[sample_idx].start for unit in plan.units)
        assert len(plan.view) <= window_k


def test_without_a_limit_every_unit_is_kept() -> None:
    plan, render, fitted = fit("full_memory", SNAPSHOT, FAILED, 1, StrategyParams(), None)
    assert all(fitted.keep) and fitted.view == plan.view and fitted.coverage.coverage == 1.0
    assert fitted.tokens == COUNTER.messages(render(plan.view))


# --- the cases that emptied memories under the old strictly-ordered rule ----------------------------

HUGE = "log " * 200  # one unit no budget below would take
ROLLING = make_snapshot([
    ("Observation", "first task"), ("Action", "a0"), ("Feedback", "ok"),
    ("Observation", "second task"), ("Action", "a1"), ("Feedback", "ok"),
    ("Observation", "third task"), ("Action", "a2"), ("Feedback", "ok"),
    ("Observation", "run the tests"), ("Action", "pytest"), ("Feedback", HUGE),  # the newest: ranked first
    ("Observation", "current task"), ("Action", "a4"),
])


def test_rolling_window_skips_a_huge_newest_sample_and_keeps_those_that_fit() -> None:
    plan, render, fitted = fit("rolling_window", ROLLING, [False] * 5, 4, StrategyParams(window_k=100), 64)
    assert [u.sample_idx for u in plan.units] == [0, 1, 2, 3]  # sample 3 is valued most (the newest)
    assert fitted.coverage.samples_kept == [0, 1, 2] and fitted.keep == (True, True, True, False)
    assert fitted.tokens <= 64 and "No previous experiences." not in render(fitted.view)[1].content
    # Under a tighter budget the newest that fit go first: sample 2, then 1.
    _, _, tighter = fit("rolling_window", ROLLING, [False] * 5, 4, StrategyParams(window_k=100), 55)
    assert tighter.coverage.samples_kept == [1, 2]


def test_full_memory_keeps_the_others_when_its_own_sample_cannot_fit() -> None:
    # Sample 3's own entries (valued most by full_memory) hold the huge log; the others still fill the budget.
    plan, render, fitted = fit("full_memory", ROLLING, [False] * 5, 3, StrategyParams(), 62)
    assert [u.sample_idx for u in plan.units][-1] == 3
    assert fitted.coverage.samples_kept == [1, 2, 4]
    assert fitted.tokens <= 62 < COUNTER.messages(render(plan.kept([u.sample_idx in (0, 1, 2, 4) for u in plan.units])))


def test_full_memory_under_a_tight_budget_never_leaves_free_space_a_sample_would_fill() -> None:
    for sample_idx in range(len(ROLLING.samples)):
        for limit in range(30, 90, 7):
            plan, render, fitted = fit("full_memory", ROLLING, [False] * 5, sample_idx, StrategyParams(), limit)
            smallest = min(COUNTER.messages(render(plan.kept([u is unit for u in plan.units]))) for unit in plan.units)
            if smallest <= limit:
                assert fitted.coverage.samples_kept, (sample_idx, limit)


class SkewedCounter:
    """Per-line counts off by `skew` tokens from what the rendered prompt really costs (words + 10); counts
    the whole-prompt counts it is asked for."""

    name = "skewed"

    def __init__(self, skew: int) -> None:
        self.skew = skew
        self.prompt_counts = 0

    def texts(self, texts: list[str]) -> list[int]:
        return [max(0, words(text) + self.skew) for text in texts]

    def messages(self, messages: list[Message]) -> int:
        self.prompt_counts += 1
        return sum(words(m.content) for m in messages) + 10


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(1, 9), min_size=1, max_size=15), st.integers(-1, 3), st.integers(0, 80))
def test_a_skewed_estimate_is_corrected_by_counting_the_prompt(line_words: list[int], skew: int, limit: int) -> None:
    """When the per-line costs are off, the rendered prompt's count decides: it fits, and a unit left out
    would not fit (give-back is bounded: after GIVE_BACK_TRIES re-counts a smaller skipped unit may remain)."""
    from memdistill.snapshots.budget import GIVE_BACK_TRIES
    from memdistill.snapshots.strategies import MemoryUnit

    lines = [" ".join(["w"] * n) for n in line_words]
    counter = SkewedCounter(skew)
    tokens_before = [0, *itertools.accumulate(counter.texts([line + "\n" for line in lines]))]

    def render(view: MemoryView) -> list[Message]:
        return teacher_messages("S", [lines[i] for i in view], "obs")

    plan = MemoryPlan(tuple(MemoryUnit(i, i, i + 1) for i in range(len(lines))))
    fixed = counter.messages(render(MemoryView())) - words("No previous experiences.")
    counter.prompt_counts = 0
    fitted = fit_to_budget(plan, render, counter, tokens_before, limit, fixed)
    spent = counter.prompt_counts
    assert fitted.view == plan.kept(fitted.keep)
    assert fitted.tokens == counter.messages(fitted.messages) == counter.messages(render(fitted.view))
    assert fitted.tokens <= limit or not any(fitted.keep)
    would_fit = [p for p, k in enumerate(fitted.keep) if not k and counter.messages(render(plan.kept(with_unit(fitted.keep, p)))) <= limit]
    assert not would_fit or spent > GIVE_BACK_TRIES


# --- an observation too long on its own: cut from the middle -----------------------------------------


def test_cut_from_middle_by_example() -> None:
    text = " ".join(f"w{i}" for i in range(100))
    assert cut_from_middle(text, 100, words) == type(cut_from_middle(text, 100, words))(text, 100, 100)
    cut = cut_from_middle(text, 30, words)
    assert words(cut.text) <= 30 and cut.tokens == 100
    head, tail = cut.text.split(CUT_MARKER.format(cut=cut.tokens - cut.kept_tokens))
    assert text.startswith(head) and text.endswith(tail) and head and tail
    assert cut.kept_tokens == words(head) + words(tail) and cut.kept_tokens >= 20  # the marker takes 5 words
    assert cut_from_middle(text, 3, words).text == CUT_MARKER.format(cut=100)  # not even the marker fits: it alone


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=0, max_size=400), st.integers(8, 120), st.sampled_from(["estimate", "words"]))
def test_cut_from_middle_keeps_head_and_tail_within_the_limit(text: str, max_tokens: int, how: str) -> None:
    from memdistill.snapshots.prompts import estimate_tokens

    count = estimate_tokens if how == "estimate" else words
    cut = cut_from_middle(text, max_tokens, count)
    assert cut.tokens == count(text)
    if cut.tokens <= max_tokens:
        assert cut.text == text and cut.kept_tokens == cut.tokens
        return
    marker = CUT_MARKER.format(cut=max(0, cut.tokens - cut.kept_tokens))
    assert marker in cut.text
    head, _, tail = cut.text.partition(marker)
    assert text.startswith(head) and text.endswith(tail) and len(head) + len(tail) < len(text)
    assert count(cut.text) <= max_tokens or (head, tail) == ("", "")
    assert abs(len(head) - len(tail)) <= 1  # the middle is what goes
