"""The prefix-reuse plan: which prompt reuses how much of its predecessor's cache (pure, no model)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from memdistill.generate.teachers.prefix_plan import common_prefix_length, plan_prefix_reuse, prefill_tokens

# Few distinct tokens and a shared stem make long common prefixes likely, as in prompts built from one memory.
token_lists = st.lists(st.integers(0, 3), min_size=1, max_size=12)
prompt_sets = st.tuples(token_lists, st.lists(st.tuples(st.integers(0, 12), token_lists), min_size=1, max_size=10)).map(
    lambda stem_and_tails: [stem_and_tails[0][:cut] + tail for cut, tail in stem_and_tails[1]]
)


def naive_common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


@given(st.lists(st.integers(0, 3), max_size=20), st.lists(st.integers(0, 3), max_size=20))
def test_common_prefix_length_matches_a_token_by_token_count(a: list[int], b: list[int]) -> None:
    assert common_prefix_length(a, b) == naive_common_prefix(a, b)


@given(prompt_sets)
def test_plan_runs_every_prompt_once_and_reuses_only_what_the_predecessor_really_shares(prompts: list[list[int]]) -> None:
    plan = plan_prefix_reuse(prompts)
    assert sorted(plan.order) == list(range(len(prompts)))
    assert plan.reused[0] == 0
    for k in range(1, len(prompts)):
        previous, current = prompts[plan.order[k - 1]], prompts[plan.order[k]]
        # the most the predecessor's cache (all its tokens but the last) can give, and never the last token
        assert plan.reused[k] == min(naive_common_prefix(previous, current), len(previous) - 1, len(current) - 1)


@given(prompt_sets)
def test_prompts_sharing_a_prefix_are_contiguous_in_the_plan(prompts: list[list[int]]) -> None:
    order = plan_prefix_reuse(prompts).order
    for i in range(len(order)):
        for j in range(i + 2, len(order)):
            shared = naive_common_prefix(prompts[order[i]], prompts[order[j]])
            for between in order[i + 1 : j]:
                assert naive_common_prefix(prompts[order[i]], prompts[between]) >= shared


@given(prompt_sets)
def test_prefill_counts_each_distinct_prefix_once(prompts: list[list[int]]) -> None:
    # With every prompt's last token fed by generation itself, the computed tokens are the distinct
    # non-empty prefixes of the prompts minus their last tokens, plus one last token per prompt.
    distinct = {tuple(p[:n]) for p in prompts for n in range(1, len(p))}
    assert prefill_tokens(prompts, plan_prefix_reuse(prompts)) == len(distinct) + len(prompts)


def test_identical_prompts_keep_their_input_order_and_reuse_all_but_the_last_token() -> None:
    plan = plan_prefix_reuse([[5, 6, 7], [1, 2], [5, 6, 7]])
    assert plan.order == (1, 0, 2)
    assert plan.reused == (0, 0, 2)


@given(st.integers(1, 30), st.integers(1, 9))
def test_batches_cover_the_order_in_consecutive_runs(count: int, batch_size: int) -> None:
    plan = plan_prefix_reuse([[i] for i in range(count)])
    batches = plan.batches(batch_size)
    assert [step for batch in batches for step in batch] == list(range(count))
    assert all(1 <= len(batch) <= batch_size for batch in batches)
