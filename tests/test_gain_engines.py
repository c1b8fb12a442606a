"""The vLLM gain engines without vLLM: the prompt-scoring reader and its bound, the served engine against the
fake vLLM server, the in-process engine over a fake `vllm` module. The real engines run in `make conformance`."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memdistill.core.errors import UserError
from memdistill.gain.engines import make_scorer
from memdistill.gain.engines.base import ScoreRequest, ScoringSettings
from memdistill.gain.engines.openai_vllm import OpenAIVLLMScorer, parse_prompt_logprobs
from memdistill.gain.engines.prompt_logprobs import ScoringMismatch, completion_positions, score_result
from memdistill.gain.engines.vllm_inprocess import VLLMScorer
from tests.fake_teacher_server import FakeTeacherServer, completion_body, expected_prompt_logprobs


def request_for(key: int, prompt: list[int], completion: list[int], topk: list[list[int]]) -> ScoreRequest:
    return ScoreRequest(key, prompt, completion, np.asarray(topk, dtype=np.int64).reshape(len(completion), len(topk[0]) if topk else 0))


def settings_for(**kwargs: Any) -> ScoringSettings:
    return ScoringSettings(**{"model": "m", "temperature": 0.0, "logprobs": "tempered", **kwargs})


# ---------------------------------------------------------------------------------------------------------
# The reader and its bound


def test_missing_ids_are_nan_and_the_bound_is_the_kth_best_not_the_scored_token() -> None:
    # K = 2; at position 0 the scored token (7) ranks far below the two returned best ids.
    request = request_for(3, [1, 2], [7, 9], [[7, 11], [9, 12]])
    entries = [{10: -0.5, 11: -1.0, 7: -9.0}, {9: -0.2, 12: -2.0}]
    result = score_result(request, entries, k=2)
    np.testing.assert_array_equal(result.logq_topk, [[-9.0, -1.0], [-0.2, -2.0]])
    np.testing.assert_array_equal(result.logq_chosen, [-9.0, -0.2])
    np.testing.assert_array_equal(result.top1_id, [10, 9])
    np.testing.assert_array_equal(result.lower_bound, [-1.0, -2.0])
    assert result.key == 3

    missing = score_result(request_for(3, [1, 2], [7, 9], [[7, 99], [9, 12]]), entries, k=2)
    assert np.isnan(missing.logq_topk[0, 1]) and np.isfinite(missing.logq_topk).sum() == 3


def test_full_vocabulary_has_no_bound() -> None:
    request = request_for(0, [1], [2], [[2, 3]])
    result = score_result(request, [{2: -0.1, 3: -2.4, 4: -5.0}], k=3, full_vocab=True)
    assert np.isnan(result.lower_bound).all()


def test_empty_completion_gives_empty_arrays() -> None:
    result = score_result(request_for(0, [1, 2], [], []), [], k=5)
    assert result.logq_topk.shape[0] == 0 and result.lower_bound.shape == (0,) and result.top1_id.shape == (0,)


@st.composite
def scored_positions(draw: st.DrawFn) -> tuple[np.ndarray, list[int], np.ndarray, int]:
    """A dense log-distribution per position over a small vocabulary, the scored token, the teacher's top-k ids
    and the engine's K."""
    vocab = draw(st.integers(3, 30))
    steps = draw(st.integers(1, 6))
    logits = np.asarray(draw(st.lists(st.floats(-8, 8, allow_nan=False, width=32), min_size=vocab * steps, max_size=vocab * steps)))
    dense = logits.reshape(steps, vocab)
    dense = dense - np.log(np.exp(dense - dense.max(1, keepdims=True)).sum(1, keepdims=True)) - dense.max(1, keepdims=True)
    chosen = [draw(st.integers(0, vocab - 1)) for _ in range(steps)]
    teacher_k = draw(st.integers(1, vocab))
    topk = np.asarray([draw(st.permutations(range(vocab)))[:teacher_k] for _ in range(steps)], dtype=np.int64)
    return dense, chosen, topk, draw(st.integers(1, vocab))


@settings(max_examples=60, deadline=None)
@given(scored_positions())
def test_returned_values_are_exact_and_the_bound_holds_for_every_missing_id(case: tuple[np.ndarray, list[int], np.ndarray, int]) -> None:
    dense, chosen, topk, k = case
    # What vLLM returns: the K best ids (torch.topk order) and the scored token.
    entries = []
    for t, row in enumerate(dense):
        best = np.argsort(-row, kind="stable")[:k]
        entries.append({int(i): float(row[i]) for i in [*best, chosen[t]]})
    result = score_result(request_for(0, [5], chosen, topk.tolist()), entries, k)
    steps = len(chosen)
    rows = np.arange(steps)[:, None]
    returned = np.array([[int(i) in entries[t] for i in topk[t]] for t in range(steps)]).reshape(topk.shape)
    np.testing.assert_array_equal(result.logq_topk[returned], dense[rows, topk][returned])
    assert np.isnan(result.logq_topk[~returned]).all()
    np.testing.assert_array_equal(result.logq_chosen, dense[np.arange(steps), chosen])
    np.testing.assert_array_equal(result.top1_id, dense.argmax(1))
    for t in range(steps):
        unreturned = [i for i in range(dense.shape[1]) if i not in entries[t]]
        assert all(dense[t, i] <= result.lower_bound[t] for i in unreturned)
        # Tight: the bound is a value the engine returned among its K best.
        assert result.lower_bound[t] in sorted(dense[t], reverse=True)[:k]


def test_positions_must_be_those_of_the_ids_sent() -> None:
    request = request_for(4, [1, 2], [7], [[7]])
    assert completion_positions([None, {2: -1.0}, {7: -0.5}], request) == [{7: -0.5}]
    with pytest.raises(ScoringMismatch, match="sample 4: the engine scored 2 prompt positions, expected 3"):
        completion_positions([None, {2: -1.0}], request)
    with pytest.raises(ScoringMismatch, match="completion position 0 was not scored as id 7"):
        completion_positions([None, {2: -1.0}, {8: -0.5}], request)


# ---------------------------------------------------------------------------------------------------------
# The served engine (/v1/completions with prompt_logprobs) against the fake vLLM server


def test_parse_reads_vllms_prompt_logprobs_shape() -> None:
    body = completion_body({"prompt": [3, 8, 9], "prompt_logprobs": 2, "model": "m"})
    positions = parse_prompt_logprobs(body)
    expected = expected_prompt_logprobs([3, 8, 9], 2)
    assert positions[0] is None
    assert positions[1:] == [{tid: value for tid, (value, _) in p.items()} for p in expected[1:]]


def test_a_server_without_prompt_scoring_is_one_clear_line() -> None:
    body = {"choices": [{"index": 0, "text": "x", "finish_reason": "length"}]}
    with pytest.raises(UserError, match="without choices\\[0\\].prompt_logprobs"):
        parse_prompt_logprobs(body)


def served_requests() -> list[ScoreRequest]:
    rng = np.random.default_rng(0)
    out = []
    for key in range(5):
        prompt = rng.integers(6, 1000, size=4 + key).tolist()
        completion = rng.integers(6, 1000, size=3 + key).tolist()
        # The teacher's own top-k: the completion's token and ids the server may or may not return.
        topk = [[c, *rng.integers(6, 1000, size=3).tolist()] for c in completion]
        out.append(request_for(key * 10, prompt, completion, topk))
    return out


def test_served_scorer_sends_token_ids_and_recovers_exactly_what_the_server_scored() -> None:
    requests = served_requests()
    with FakeTeacherServer(flavor="vllm") as server:
        scorer = OpenAIVLLMScorer("m", settings_for(base_url=(server.url,), concurrency=2))
        results = scorer.score(requests)
        bodies = {tuple(b["prompt"]): b for b in server.bodies}
    assert [r.key for r in results] == [r.key for r in requests]
    for request, result in zip(requests, results):
        ids = [*request.prompt_ids, *request.completion_ids]
        body = bodies[tuple(ids)]
        assert body["max_tokens"] == 1 and body["prompt_logprobs"] == 4 and body["model"] == "m"
        scored = expected_prompt_logprobs(ids, 4)[len(request.prompt_ids):]
        entries = [{tid: value for tid, (value, _) in p.items()} for p in scored]
        expected = score_result(request, entries, 4)
        np.testing.assert_array_equal(result.logq_topk, expected.logq_topk)
        np.testing.assert_array_equal(result.logq_chosen, [p[c][0] for p, c in zip(scored, request.completion_ids)])
        np.testing.assert_array_equal(result.top1_id, [min(p, key=lambda i: p[i][1]) for p in scored])
        np.testing.assert_array_equal(result.lower_bound, [max(v for v, r in p.values() if r == 4) for p in scored])


def test_served_scorer_retries_a_failing_server() -> None:
    requests = served_requests()[:2]
    with FakeTeacherServer(flavor="vllm", faults=lambda key, attempt: "503" if attempt == 1 else None) as server:
        scorer = OpenAIVLLMScorer("m", settings_for(base_url=(server.url,), max_retries=2))
        scorer._client.retry_backoff = 0.0
        results = scorer.score(requests)
        assert sum(server.received.values()) == 4
    assert len(results) == 2 and np.isfinite(results[0].logq_chosen).all()


def test_a_count_above_the_servers_max_logprobs_stops_with_the_servers_reason() -> None:
    with FakeTeacherServer(flavor="vllm", max_logprobs=2) as server:
        scorer = OpenAIVLLMScorer("m", settings_for(base_url=(server.url,)))
        with pytest.raises(UserError, match="greater than max allowed: 2.*--max-logprobs"):
            scorer.score(served_requests()[:1])


def test_tempered_logprobs_at_temperature_are_refused_in_one_line() -> None:
    scorer = OpenAIVLLMScorer("m", settings_for(base_url=("http://127.0.0.1:9/v1",), temperature=0.7))
    with pytest.raises(UserError, match="tempered at temperature 0.7"):
        scorer.score(served_requests()[:1])


def test_served_scorer_needs_a_url_and_keeps_credentials_out_of_describe() -> None:
    with pytest.raises(UserError, match="gain.base_url: the dataset was generated on a vLLM server"):
        OpenAIVLLMScorer("m", settings_for())
    scorer = OpenAIVLLMScorer("m", settings_for(base_url=("http://user:secret@host:8000/v1",)))
    assert "secret" not in str(scorer.describe()) and scorer.describe()["model"] == "m"


def test_make_scorer_picks_the_vllm_engines() -> None:
    served = make_scorer("openai", "vllm", "m", settings_for(base_url=("http://127.0.0.1:9/v1",)))
    assert served is not None and served.name == "openai-vllm"
    assert make_scorer("openai", "openai", "m", settings_for()) is None
    in_process = make_scorer("vllm", None, "m", settings_for())
    assert in_process is not None and in_process.name == "vllm"


# ---------------------------------------------------------------------------------------------------------
# The in-process engine over a fake `vllm` module: LLM.generate on TokensPrompts, as vLLM 0.32 answers it
# (RequestOutput.prompt_logprobs: None then {id: Logprob(logprob, rank)} per prompt position;
# prompt_token_id_logprobs: [prompt_len - 1 - start, num_ids] with -inf at -1 pads).

FAKE_VOCAB = 40


@dataclass
class FakeLogprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


def dense_logq(prefix: list[int]) -> np.ndarray:
    """The fake model's log q over FAKE_VOCAB after `prefix`."""
    rng = np.random.default_rng(abs(hash(tuple(prefix))) % (2**32))
    logits = rng.normal(0.0, 2.0, FAKE_VOCAB)
    return logits - np.log(np.exp(logits).sum())


class FakeScoringParams:
    """vLLM 0.32's SamplingParams fields used here (a msgspec Struct lists them in __struct_fields__)."""

    __struct_fields__ = ("max_tokens", "temperature", "detokenize", "prompt_logprobs", "prompt_logprob_token_ids", "prompt_logprob_start")

    def __init__(self, **kwargs: Any) -> None:
        self.__dict__.update({"prompt_logprobs": None, "prompt_logprob_token_ids": None, "prompt_logprob_start": None, **kwargs})


class OlderScoringParams(FakeScoringParams):
    __struct_fields__ = ("max_tokens", "temperature", "detokenize", "prompt_logprobs")


@dataclass
class FakeScoringLLM:
    model: str
    max_logprobs: int = 20
    v2: bool = True
    kwargs: dict[str, Any] = field(default_factory=dict)
    calls: list[tuple[list[dict[str, Any]], list[Any]]] = field(default_factory=list)
    instances = []  # type: ignore[var-annotated]

    def __post_init__(self) -> None:
        self.llm_engine = types.SimpleNamespace(vllm_config=types.SimpleNamespace(use_v2_model_runner=self.v2))
        FakeScoringLLM.instances.append(self)

    def generate(self, prompts: list[dict[str, Any]], params: list[Any], use_tqdm: bool = True) -> list[Any]:
        self.calls.append((prompts, params))
        outputs = []
        for prompt, p in zip(prompts, params):
            ids = prompt["prompt_token_ids"]
            k = p.prompt_logprobs
            assert k is not None and k <= self.max_logprobs and p.max_tokens == 1 and p.detokenize is False
            positions: list[Any] = [None]
            for j in range(1, len(ids)):
                dense = dense_logq(ids[:j])
                order = np.argsort(-dense, kind="stable")
                ranks = {int(t): r + 1 for r, t in enumerate(order)}
                entry = {int(t): FakeLogprob(float(dense[t]), ranks[int(t)]) for t in order[:k]}
                entry.setdefault(ids[j], FakeLogprob(float(dense[ids[j]]), ranks[ids[j]]))
                positions.append(entry)
            scores = None
            if p.prompt_logprob_token_ids is not None:
                assert self.v2, "prompt_logprob_token_ids requires the V2 model runner"
                rows = np.asarray(p.prompt_logprob_token_ids)
                assert len(rows) == len(ids) - 1 - p.prompt_logprob_start
                scores = np.stack([
                    np.where(row >= 0, dense_logq(ids[: p.prompt_logprob_start + i + 1])[np.maximum(row, 0)], -np.inf)
                    for i, row in enumerate(rows)
                ]).astype(np.float32)
            outputs.append(types.SimpleNamespace(prompt_token_ids=ids, prompt_logprobs=positions, prompt_token_id_logprobs=scores))
        return outputs


def install_fake_vllm(monkeypatch: pytest.MonkeyPatch, params: type, v2: bool) -> None:
    module = types.ModuleType("vllm")
    module.LLM = lambda **kwargs: FakeScoringLLM(kwargs.pop("model"), kwargs.pop("max_logprobs"), v2, kwargs)  # type: ignore[attr-defined]
    module.SamplingParams = params  # type: ignore[attr-defined]
    module.TokensPrompt = dict  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", module)
    FakeScoringLLM.instances.clear()


def inprocess_requests() -> list[ScoreRequest]:
    rng = np.random.default_rng(1)
    out = []
    for key in range(5):
        prompt = rng.integers(0, FAKE_VOCAB, size=3 + key).tolist()
        completion = rng.integers(0, FAKE_VOCAB, size=(0 if key == 2 else 2 + key)).tolist()
        topk = [[*rng.choice(FAKE_VOCAB, size=5, replace=False).tolist(), -1] for _ in completion]
        out.append(request_for(key, prompt, completion, topk) if completion else ScoreRequest(key, prompt, [], np.zeros((0, 6), dtype=np.int64)))
    return out


def dense_rows(request: ScoreRequest) -> np.ndarray:
    ids = [*request.prompt_ids, *request.completion_ids]
    return np.stack([dense_logq(ids[: len(request.prompt_ids) + t]) for t in range(len(request.completion_ids))])


def test_in_process_per_id_scoring_returns_every_teacher_id_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake_vllm(monkeypatch, FakeScoringParams, v2=True)
    requests = inprocess_requests()
    scorer = VLLMScorer("org/m", settings_for(model="org/m", batch_size=2))
    results = scorer.score(requests)
    assert scorer.mode == "per-id" and scorer.describe()["model"] == "org/m"
    llm = FakeScoringLLM.instances[0]
    assert llm.model == "org/m" and llm.max_logprobs == 20 and len(llm.calls) == 2  # 4 non-empty samples, 2 per call
    prompts, params = llm.calls[0]
    assert prompts[0]["prompt_token_ids"] == [*requests[0].prompt_ids, *requests[0].completion_ids]
    assert params[0].prompt_logprob_start == len(requests[0].prompt_ids) - 1
    for request, result in zip(requests, results):
        assert result.key == request.key
        if not request.completion_ids:
            assert result.logq_topk.shape[0] == 0
            continue
        dense = dense_rows(request)
        steps = np.arange(len(request.completion_ids))
        topk = request.topk_ids
        expected = np.where(topk >= 0, dense[steps[:, None], np.maximum(topk, 0)], np.nan)
        np.testing.assert_allclose(result.logq_topk, expected, rtol=0, atol=1e-6)
        np.testing.assert_allclose(result.logq_chosen, dense[steps, request.completion_ids], rtol=0, atol=1e-6)
        np.testing.assert_array_equal(result.top1_id, dense.argmax(1))
        assert np.isnan(result.lower_bound).all()


@pytest.mark.parametrize("params, v2", [(OlderScoringParams, True), (FakeScoringParams, False)], ids=["older-vllm", "v1-runner"])
def test_in_process_falls_back_to_top_k_with_the_bound(monkeypatch: pytest.MonkeyPatch, params: type, v2: bool) -> None:
    install_fake_vllm(monkeypatch, params, v2)
    requests = [r for r in inprocess_requests() if r.completion_ids]
    scorer = VLLMScorer("m", settings_for(batch_size=8))
    results = scorer.score(requests)
    assert scorer.mode == "top-k"
    for request, result in zip(requests, results):
        dense = dense_rows(request)
        steps = np.arange(len(request.completion_ids))
        returned_best = np.sort(dense, axis=1)[:, ::-1][:, :6]  # prompt_logprobs = the teacher's width, 6
        topk = request.topk_ids
        # Returned: the K best, and the completion's own id wherever it ranks.
        own = topk == np.asarray(request.completion_ids)[:, None]
        within = (topk >= 0) & ((dense[steps[:, None], np.maximum(topk, 0)] >= returned_best[:, -1:]) | own)
        np.testing.assert_allclose(result.logq_topk[within], dense[steps[:, None], np.maximum(topk, 0)][within], atol=1e-12)
        assert np.isnan(result.logq_topk[~within]).all()
        np.testing.assert_allclose(result.logq_chosen, dense[steps, request.completion_ids], atol=1e-12)
        np.testing.assert_allclose(result.lower_bound, returned_best[:, -1], atol=1e-12)


def test_in_process_refuses_tempered_logprobs_before_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake_vllm(monkeypatch, FakeScoringParams, v2=True)
    with pytest.raises(UserError, match="tempered at temperature 0.5"):
        VLLMScorer("m", settings_for(temperature=0.5)).score(inprocess_requests())
    assert FakeScoringLLM.instances == []
    raw = VLLMScorer("m", settings_for(temperature=0.5, logprobs="raw")).score(inprocess_requests()[:1])
    assert np.isfinite(raw[0].logq_chosen).all()


def test_the_gain_stage_scores_a_vllm_servers_dataset_on_its_completions_endpoint(tmp_path: Path) -> None:
    """End to end: a dataset generated by `openai` flavor `vllm` is scored by the served engine (gain.backend
    auto) on the server it records, on exactly the student prompt's and completion's ids; ids outside the
    server's top-K are counted."""
    from memdistill.gain.gain_file import read_summary, read_table
    from memdistill.gain.scoring import GainOptions, run_gain
    from tests.test_gain import _teacher, write_pair

    with FakeTeacherServer(flavor="vllm") as server:
        # The server the dataset records (generate's base_url) is where it is scored.
        prompts, dataset = write_pair(tmp_path, {**_teacher("openai", "smollm2-135m-instruct", "vllm"), "base_url": server.url})
        run_gain(prompts, dataset, tmp_path / "gain.parquet", GainOptions("auto"))
        sent = [body["prompt"] for body in server.bodies]
    rows = read_table(tmp_path / "gain.parquet").to_pylist()
    assert [r["status"] for r in rows] == ["measured"] * 3 and len(sent) == 3
    assert read_summary(tmp_path / "gain.parquet")["engine"]["engine"] == "openai-vllm"
    for row in rows:
        ids = next(p for p in sent if p[-len(row["token_ids"]):] == row["token_ids"])
        scored = expected_prompt_logprobs(ids, 2)[len(ids) - len(row["token_ids"]):]
        assert row["logq_chosen"] == [p[t][0] for p, t in zip(scored, row["token_ids"])]
        # The teacher's second id per position (1000 + t) is not among the fake's best two: bounded, counted.
        assert row["missing_entries"] >= len(row["token_ids"]) - 1


def test_in_process_per_id_refuses_a_prompt_scored_as_other_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake_vllm(monkeypatch, FakeScoringParams, v2=True)
    original = FakeScoringLLM.generate

    def retokenised(self: FakeScoringLLM, prompts: list[dict[str, Any]], params: list[Any], use_tqdm: bool = True) -> list[Any]:
        outputs = original(self, prompts, params, use_tqdm)
        for output in outputs:
            output.prompt_logprobs = output.prompt_logprobs[:-1]
        return outputs

    monkeypatch.setattr(FakeScoringLLM, "generate", retokenised)
    with pytest.raises(UserError, match="vllm: sample 0: the engine scored"):
        VLLMScorer("m", settings_for()).score(inprocess_requests()[:1])


def test_a_wider_prompt_logprobs_leaves_no_teacher_id_to_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    # gain.prompt_logprobs wider than the teacher's top-k (here the whole fake vocabulary): every teacher id
    # comes back with its exact value, and the engine is loaded to allow that many.
    install_fake_vllm(monkeypatch, OlderScoringParams, v2=True)
    requests = [r for r in inprocess_requests() if r.completion_ids]
    scorer = VLLMScorer("m", settings_for(prompt_logprobs=FAKE_VOCAB))
    results = scorer.score(requests)
    llm = FakeScoringLLM.instances[0]
    assert scorer.mode == "top-k" and llm.max_logprobs == FAKE_VOCAB + 1
    assert {p.prompt_logprobs for _, params in llm.calls for p in params} == {FAKE_VOCAB}
    for request, result in zip(requests, results):
        dense = dense_rows(request)
        steps = np.arange(len(request.completion_ids))
        topk = request.topk_ids
        expected = np.where(topk >= 0, dense[steps[:, None], np.maximum(topk, 0)], np.nan)
        np.testing.assert_allclose(result.logq_topk, expected, atol=1e-12)
        np.testing.assert_allclose(result.lower_bound, dense.min(axis=1), atol=1e-12)


def test_served_scorer_asks_for_the_configured_prompt_logprobs() -> None:
    requests = served_requests()[:2]
    with FakeTeacherServer(flavor="vllm") as server:
        OpenAIVLLMScorer("m", settings_for(base_url=(server.url,), prompt_logprobs=9)).score(requests)
        assert {b["prompt_logprobs"] for b in server.bodies} == {9}
