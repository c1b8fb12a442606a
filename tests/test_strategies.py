"""Memory-formation strategies on small hand-written histories, with the expected views written out."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memdistill.core.errors import UserError
from memdistill.snapshots.checkpoint import MemoryEntry, Snapshot, split_samples
from memdistill.snapshots.feedback import FeedbackReader
from memdistill.snapshots.strategies import (
    MemoryView,
    StrategyParams,
    build_memory_plans,
    build_memory_view,
    get_strategy,
    strategy_names,
)
from memdistill.snapshots.strategies.failure_focus import rank_samples

# index: entry                        sample
HISTORY = [
    ("Note", "Task: arithmetic"),  # 0  preamble (no sample)
    ("Observation", "2+2?"),  # 1  sample 0
    ("Action", "4"),  # 2
    ("Feedback", {"correct": True}),  # 3
    ("Observation", "3*3?"),  # 4  sample 1 (failed)
    ("Action", "6"),  # 5
    ("Feedback", "Wrong, expected 9"),  # 6
    ("observation", "10-7?"),  # 7  sample 2
    ("ACTION", "3"),  # 8
    ("Thought", "double-check"),  # 9  other type: belongs to sample 2, starts none
    ("feedback", {"reward": 1}),  # 10
    ("Observation", "5/5?"),  # 11 sample 3 (no feedback yet)
    ("Action", "1"),  # 12
]
FAILED = [False, True, False, False]


def make_snapshot(history: list[tuple[str, object]]) -> Snapshot:
    entries = tuple(MemoryEntry(i, kind, content) for i, (kind, content) in enumerate(history))  # type: ignore[arg-type]
    return Snapshot(Path("memory_1.jsonl"), "0" * 64, entries, split_samples(entries))


SNAPSHOT = make_snapshot(HISTORY)


def view(name: str, sample_idx: int, **params: object) -> list[int]:
    return build_memory_view(name, SNAPSHOT, SNAPSHOT.samples[sample_idx], StrategyParams(**params), FAILED).indices()  # type: ignore[arg-type]


def test_history_splits_as_annotated() -> None:
    assert [(s.start, s.stop) for s in SNAPSHOT.samples] == [(1, 4), (4, 7), (7, 11), (11, 13)]
    reader = FeedbackReader.from_params()
    assert [reader.failed(s.feedback.content if s.feedback else None) for s in SNAPSHOT.samples] == FAILED


def test_registry_lists_the_five_strategies() -> None:
    assert strategy_names() == ["exclude_current", "failure_focus", "full_memory", "random_sampling", "rolling_window"]


def test_full_memory_sees_everything() -> None:
    for sample_idx in range(4):
        assert view("full_memory", sample_idx) == list(range(13))


def test_exclude_current_removes_only_the_samples_own_entries() -> None:
    assert view("exclude_current", 0) == [0, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    assert view("exclude_current", 1) == [0, 1, 2, 3, 7, 8, 9, 10, 11, 12]
    assert view("exclude_current", 2) == [0, 1, 2, 3, 4, 5, 6, 11, 12]  # the Thought (9) goes with sample 2
    assert view("exclude_current", 3) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]


def test_rolling_window_takes_the_whole_samples_just_before_the_observation() -> None:
    assert view("rolling_window", 0, window_k=3) == [0]
    assert view("rolling_window", 1, window_k=3) == [1, 2, 3]
    assert view("rolling_window", 2, window_k=3) == [4, 5, 6]
    # Entries 8-10 are the last three, but sample 2 starts at 7: never an ACTION without its OBSERVATION.
    assert view("rolling_window", 3, window_k=3) == []
    assert view("rolling_window", 3, window_k=4) == [7, 8, 9, 10]
    assert view("rolling_window", 3, window_k=100) == list(range(11))
    assert view("rolling_window", 2, window_k=1) == []


def test_failure_focus_puts_failures_first_then_the_most_recent_others() -> None:
    # Priority: failed sample 1, then 3, 2, 0 (newest first); the preamble (entry 0) is always kept.
    assert rank_samples(FAILED) == [1, 3, 2, 0]
    assert view("failure_focus", 0, max_memory_samples=2) == [0, 4, 5, 6, 11, 12]
    assert view("failure_focus", 1, max_memory_samples=2) == [0, 7, 8, 9, 10, 11, 12]
    assert view("failure_focus", 3, max_memory_samples=2) == [0, 4, 5, 6, 7, 8, 9, 10]
    assert view("failure_focus", 2, max_memory_samples=1) == [0, 4, 5, 6]
    assert view("failure_focus", 1, max_memory_samples=1) == [0, 11, 12]
    assert view("failure_focus", 2, max_memory_samples=0) == [0]
    assert view("failure_focus", 0, max_memory_samples=99) == [0, *range(4, 13)]


def test_failure_focus_uses_the_failure_patterns_given() -> None:
    params = StrategyParams(max_memory_samples=1, failure_patterns=[r"double"])
    snapshot = make_snapshot(HISTORY[:7] + [("Observation", "x"), ("Feedback", "double trouble"), ("Observation", "y")])
    reader = FeedbackReader.from_params(failure_patterns=[r"double"])
    failed = [reader.failed(s.feedback.content if s.feedback else None) for s in snapshot.samples]
    assert failed == [False, False, True, False]
    assert build_memory_view("failure_focus", snapshot, snapshot.samples[0], params, failed).indices() == [0, 7, 8]


# Every failure-reading case is in tests/test_feedback.py.


def test_unknown_strategy_names_the_choices() -> None:
    with pytest.raises(UserError, match=r"strategy: unknown strategy 'newest'; expected one of exclude_current, failure_focus"):
        get_strategy("newest")


@pytest.mark.parametrize("window_k", [0, -3, True, "4"])
def test_rolling_window_rejects_bad_window_k(window_k: object) -> None:
    with pytest.raises(UserError, match=r"^window_k: must be an integer of at least 1"):
        view("rolling_window", 1, window_k=window_k)


def test_failure_focus_rejects_negative_max_memory_samples() -> None:
    with pytest.raises(UserError, match=r"^max_memory_samples: must be an integer of at least 0, got -1"):
        view("failure_focus", 1, max_memory_samples=-1)


# --- MemoryView --------------------------------------------------------------------------------------


def test_memory_view_normalises_and_trims() -> None:
    memory = MemoryView.of([(7, 9), (0, 2), (2, 3), (5, 5), (8, 10)])
    assert memory.ranges == ((0, 3), (7, 10))
    assert memory.indices() == [0, 1, 2, 7, 8, 9] and len(memory) == 6
    assert 8 in memory and 5 not in memory
    assert memory.without_oldest(2).indices() == [2, 7, 8, 9]
    assert memory.without_oldest(3).ranges == ((7, 10),)
    assert memory.without_oldest(6).ranges == ()
    assert memory.inclusive_ranges() == [[0, 2], [7, 9]]
    assert MemoryView.from_indices([4, 2, 3, 9]).ranges == ((2, 5), (9, 10))


@given(st.sets(st.integers(0, 60)), st.integers(0, 70))
def test_memory_view_round_trips_indices(indices: set[int], drop: int) -> None:
    memory = MemoryView.from_indices(indices)
    assert memory.indices() == sorted(indices)
    assert memory.without_oldest(drop).indices() == sorted(indices)[drop:]


# --- property: the current sample never leaks --------------------------------------------------------

KINDS = ["Observation", "Action", "Feedback", "Note", "observation", "ACTION", "feedback"]


@st.composite
def histories(draw: st.DrawFn) -> tuple[Snapshot, list[bool]]:
    kinds = draw(st.lists(st.sampled_from(KINDS), min_size=1, max_size=40))
    kinds.insert(draw(st.integers(0, len(kinds))), "Observation")  # at least one sample
    history = [(kind, f"{kind}-{i}") for i, kind in enumerate(kinds)]
    snapshot = make_snapshot(history)
    failed = draw(st.lists(st.booleans(), min_size=len(snapshot.samples), max_size=len(snapshot.samples)))
    return snapshot, failed


@settings(max_examples=300, deadline=None)
@given(histories(), st.integers(1, 12), st.integers(0, 6), st.data())
def test_no_strategy_but_full_memory_shows_sample_i_its_own_entries(
    history: tuple[Snapshot, list[bool]], window_k: int, max_memory_samples: int, data: st.DataObject
) -> None:
    snapshot, failed = history
    sample = snapshot.samples[data.draw(st.integers(0, len(snapshot.samples) - 1))]
    params = StrategyParams(window_k=window_k, max_memory_samples=max_memory_samples)
    own = set(sample.entry_indices)
    for name in ("exclude_current", "rolling_window", "failure_focus", "random_sampling"):
        memory = build_memory_view(name, snapshot, sample, params, failed)
        assert not own & set(memory), name
        if sample.action is not None:
            assert sample.action.index not in memory, name
        assert memory.indices() == sorted(memory.indices())  # original order
    # exclude_current is precisely everything else.
    assert set(build_memory_view("exclude_current", snapshot, sample, params, failed)) == set(range(len(snapshot.entries))) - own
    assert set(build_memory_view("full_memory", snapshot, sample, params, failed)) == set(range(len(snapshot.entries)))


# --- random_sampling ----------------------------------------------------------------------------------


def test_random_sampling_by_example() -> None:
    params = StrategyParams(subset_size=2, num_subsets=3, seed=5)
    plans = build_memory_plans("random_sampling", SNAPSHOT, SNAPSHOT.samples[1], params, FAILED)
    views = [plan.view.indices() for plan in plans]
    assert len(views) == 3 and len({tuple(v) for v in views}) == 3  # 3 of the C(3, 2) = 3 possible subsets
    for plan in plans:
        assert plan.samples() == [-1, *sorted(i for i in plan.samples() if i >= 0)] and len(plan.samples()) == 3
        assert 1 not in plan.samples()
    # The same seed gives the same views; another seed may give them in another order.
    assert plans == build_memory_plans("random_sampling", SNAPSHOT, SNAPSHOT.samples[1], params, FAILED)


def test_random_sampling_shuffle_shows_the_drawn_order() -> None:
    params = StrategyParams(subset_size=3, num_subsets=1, shuffle=True, seed=1)
    orders = set()
    for seed in range(12):
        plan = build_memory_plans("random_sampling", SNAPSHOT, SNAPSHOT.samples[3], StrategyParams(subset_size=3, num_subsets=1, shuffle=True, seed=seed), FAILED)[0]
        shown = [SNAPSHOT.entries[i].content for i in plan.view if SNAPSHOT.entries[i].kind == "observation"]
        assert sorted(shown) == sorted(["2+2?", "3*3?", "10-7?"])
        orders.add(tuple(shown))
    assert len(orders) > 1  # not always the original order
    assert build_memory_plans("random_sampling", SNAPSHOT, SNAPSHOT.samples[3], params, FAILED)[0].view.indices()[0] == 0  # preamble first


@pytest.mark.parametrize(("name", "value"), [("subset_size", 0), ("num_subsets", -1), ("num_subsets", True)])
def test_random_sampling_rejects_bad_params(name: str, value: object) -> None:
    with pytest.raises(UserError, match=rf"^{name}: must be an integer of at least 1"):
        build_memory_plans("random_sampling", SNAPSHOT, SNAPSHOT.samples[0], StrategyParams(**{name: value}), FAILED)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(histories(), st.integers(1, 6), st.integers(1, 5), st.booleans(), st.integers(0, 10**6), st.data())
def test_random_sampling_views_hold_whole_samples_never_the_own_one(
    history: tuple[Snapshot, list[bool]], subset_size: int, num_subsets: int, shuffle: bool, seed: int, data: st.DataObject
) -> None:
    snapshot, failed = history
    sample = snapshot.samples[data.draw(st.integers(0, len(snapshot.samples) - 1))]
    params = StrategyParams(subset_size=subset_size, num_subsets=num_subsets, shuffle=shuffle, seed=seed)
    plans = build_memory_plans("random_sampling", snapshot, sample, params, failed)
    others = len(snapshot.samples) - 1
    size = min(subset_size, others)
    assert len(plans) == num_subsets
    drawn = []
    for plan in plans:
        chosen = [i for i in plan.samples() if i >= 0]
        assert len(chosen) == size and sample.sample_idx not in chosen
        memory = plan.view.indices()
        assert not set(sample.entry_indices) & set(memory)
        for i in chosen:  # whole samples: every entry of each chosen sample, nothing of the others
            assert set(snapshot.samples[i].entry_indices) <= set(memory)
        if not shuffle:
            assert memory == sorted(memory)
        drawn.append(frozenset(chosen))
    # Distinct views while the memory allows.
    assert len(set(drawn)) == min(num_subsets, math.comb(others, size))
    assert plans == build_memory_plans("random_sampling", snapshot, sample, params, failed)


# --- random_sampling: linear in samples x views, same draws as drawing from the list -----------------


@given(st.integers(0, 80), st.data())
def test_other_samples_is_the_list_without_the_own_sample(count: int, data: st.DataObject) -> None:
    from memdistill.snapshots.strategies.random_sampling import OtherSamples

    own = data.draw(st.none() | st.integers(0, max(0, count - 1))) if count else None
    others = OtherSamples(count, own)
    expected = [i for i in range(count) if i != own]
    assert len(others) == len(expected) and list(others) == expected
    assert [others[i] for i in range(len(expected))] == expected and others[-1:] == expected[-1:]
    with pytest.raises(IndexError):
        others[len(expected)]


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 300), st.integers(1, 40), st.integers(1, 5), st.integers(0, 10**6), st.data())
def test_random_sampling_draws_what_the_list_of_others_gave(count: int, size: int, views: int, seed: int, data: st.DataObject) -> None:
    """Drawing from OtherSamples gives the same subsets as drawing from the list the strategy used to build
    for each observation (so rows stay byte-identical for the same seed), small memories and large."""
    import random

    from memdistill.snapshots.strategies.random_sampling import OtherSamples, draw_subsets

    own = data.draw(st.none() | st.integers(0, count - 1))
    listed = [i for i in range(count) if i != own]
    key = f"random_sampling:{seed}:{own}"
    assert draw_subsets(OtherSamples(count, own), size, views, random.Random(key)) == draw_subsets(listed, size, views, random.Random(key))


def test_random_sampling_never_walks_the_whole_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each observation draws by index: nothing per observation walks the memory's samples."""
    from memdistill.snapshots.strategies import random_sampling

    def no_walk(self: object) -> object:
        raise AssertionError("walked every sample")

    history = [("Observation", f"o{i}") if i % 2 == 0 else ("Action", f"a{i}") for i in range(2000)]
    snapshot = make_snapshot(history)
    params = StrategyParams(subset_size=4, num_subsets=3, seed=3)
    plans_of = get_strategy("random_sampling").prepare(snapshot, params, [False] * len(snapshot.samples))
    monkeypatch.setattr(random_sampling.OtherSamples, "__iter__", no_walk)
    monkeypatch.setattr(random_sampling, "is_own", no_walk, raising=False)
    for sample in snapshot.samples[:50]:
        plans = plans_of(sample)
        assert len(plans) == 3 and all(len(plan.units) == 4 for plan in plans)
        assert all(sample.sample_idx not in plan.samples() for plan in plans)


def test_random_sampling_says_once_when_subset_size_is_more_than_the_memory(caplog: pytest.LogCaptureFixture) -> None:
    params = StrategyParams(subset_size=9, num_subsets=2, seed=1)
    plans_of = get_strategy("random_sampling").prepare(SNAPSHOT, params, FAILED)
    for sample in SNAPSHOT.samples:
        assert all(len([i for i in plan.samples() if i >= 0]) == 3 for plan in plans_of(sample))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        "random_sampling: subset_size 9 is more than the 3 samples of the memory an observation can draw from "
        "(its own is never drawn); each view holds those 3"
    ]
