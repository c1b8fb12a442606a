"""Gain scoring with `vllm.LLM` in this process: one prefill of student prompt + completion ids per sample.

Each sample is a `TokensPrompt(prompt_token_ids=student_prompt_ids + completion_ids)` (no tokenisation)
with `max_tokens=1`. Two ways to read log q_without_memory, chosen once the engine is up:
- per id (`prompt_logprob_token_ids`, vLLM >= 0.32 on its V2 model runner): every causal row from the last
  student-prompt token on scores exactly the teacher's top-k ids at that position and the completion's own
  id, so nothing is missing; `prompt_logprobs=1` alongside gives the engine's argmax.
- top-K (`prompt_logprobs=K`, every vLLM; the V1 runner, which vLLM picks where Triton cannot run, e.g. on
  CPU): the K best ids and the completion's own id per position; a teacher id outside them gets the bound
  of prompt_logprobs.py (the K-th best value) and is counted by the gain math.

vLLM's prompt logprobs are log softmax(logits) in both ways, whatever `logprobs_mode`: the raw contract. A
dataset whose logprobs are tempered at T > 0 is refused in one line (refuse_tempered).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from memdistill.core.errors import UserError
from memdistill.core.models import EMBEDDED_MODEL, is_embedded
from memdistill.gain.engines.base import ScoreRequest, ScoreResult, ScoringSettings
from memdistill.gain.engines.prompt_logprobs import ScoringMismatch, completion_positions, refuse_tempered, score_result
from memdistill.generate.teachers.vllm_inprocess import _import_vllm, engine_args

PER_ID = "per-id"
TOP_K = "top-k"


def teacher_width(requests: Sequence[ScoreRequest]) -> int:
    """The widest teacher top-k row among `requests` (at least 1)."""
    return max([1, *(int(np.shape(r.topk_ids)[-1]) for r in requests if np.ndim(r.topk_ids) == 2)])


def per_id_rows(request: ScoreRequest) -> np.ndarray:
    """int64 [T, K + 1]: per completion position the teacher's top-k ids (-1 pads, scored -inf by vLLM) and, last,
    the completion's own id."""
    steps = len(request.completion_ids)
    topk = np.asarray(request.topk_ids, dtype=np.int64).reshape(steps, -1)
    return np.concatenate([np.where(topk >= 0, topk, -1), np.asarray(request.completion_ids, dtype=np.int64)[:, None]], axis=1)


def per_id_result(request: ScoreRequest, scores: np.ndarray, argmax_positions: Sequence[Any]) -> ScoreResult:
    """The ScoreResult from vLLM's `prompt_token_id_logprobs` ([T, K + 1], rows of per_id_rows) and the argmax
    entries of prompt_logprobs=1 at the completion's positions ({id: Logprob} holding the rank-1 id)."""
    steps = len(request.completion_ids)
    rows = per_id_rows(request)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != rows.shape:
        raise ScoringMismatch(f"sample {request.key}: vLLM scored ids of shape {scores.shape}, expected {rows.shape}")
    logq_topk = np.where(rows[:, :-1] >= 0, scores[:, :-1], np.nan)
    top1 = np.fromiter((_rank_one(entries) for entries in argmax_positions), dtype=np.int64, count=steps)
    return ScoreResult(key=request.key, logq_topk=logq_topk, logq_chosen=scores[:, -1].copy(), top1_id=top1,
                       lower_bound=np.full(steps, np.nan))


def _rank_one(entries: Any) -> int:
    best = [token_id for token_id, entry in (entries or {}).items() if getattr(entry, "rank", None) == 1]
    return int(best[0]) if best else -1


def _as_values(position: Any) -> dict[int, float] | None:
    return None if position is None else {int(token_id): float(entry.logprob) for token_id, entry in position.items()}


class VLLMScorer:
    """`vllm.LLM` loaded on the first `score` (the teacher's widest top-k row, or settings.prompt_logprobs when
    wider, sets its max_logprobs);
    `engine_args` go to `vllm.LLM` as they are."""

    name = "vllm"

    def __init__(self, model: str, settings: ScoringSettings, **extra_engine_args: Any) -> None:
        self.model_name = EMBEDDED_MODEL if is_embedded(model) else model
        self.settings = settings
        self.extra_engine_args = extra_engine_args
        self.mode: str | None = None
        self._llm: Any = None
        self._vllm: Any = None

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "model": self.model_name, "scoring": self.mode, "batch_size": self.settings.batch_size}

    def _load(self, width: int) -> None:
        if self._llm is not None:
            return
        self._vllm = _import_vllm()
        # Room for a per-id row: the teacher's K ids and the completion's own.
        self._llm = self._vllm.LLM(**engine_args(self.model_name, width + 1, self.extra_engine_args))
        self.mode = PER_ID if self._per_id_available() else TOP_K

    def _per_id_available(self) -> bool:
        fields = getattr(self._vllm.SamplingParams, "__struct_fields__", ())
        config = getattr(getattr(self._llm, "llm_engine", None), "vllm_config", None)
        return "prompt_logprob_token_ids" in fields and bool(getattr(config, "use_v2_model_runner", False))

    def _params(self, request: ScoreRequest, width: int) -> Any:
        common = {"max_tokens": 1, "temperature": 0.0, "detokenize": False}
        if self.mode == PER_ID:
            return self._vllm.SamplingParams(
                **common, prompt_logprobs=1, prompt_logprob_token_ids=per_id_rows(request).tolist(),
                # Row i predicts prompt token start + i + 1: the first completion token is predicted by the last prompt row.
                prompt_logprob_start=len(request.prompt_ids) - 1,
            )
        return self._vllm.SamplingParams(**common, prompt_logprobs=width)

    def _result(self, request: ScoreRequest, output: Any, width: int) -> ScoreResult:
        positions = list(output.prompt_logprobs or [])
        try:
            if self.mode == PER_ID:
                # prompt_logprobs=1 holds the argmax and the prompt's own token: the alignment check as well.
                return per_id_result(request, output.prompt_token_id_logprobs, completion_positions(positions, request))
            entries = completion_positions([_as_values(p) for p in positions], request)
            return score_result(request, entries, width)
        except ScoringMismatch as exc:
            raise UserError(f"vllm: {exc}") from None

    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        refuse_tempered(self.settings)
        results: dict[int, ScoreResult] = {}
        scored = [i for i, r in enumerate(requests) if r.completion_ids]
        for i, request in enumerate(requests):
            if not request.completion_ids:  # nothing to prefill; the math gives such a sample gain null
                results[i] = score_result(request, [], 1)
        if scored:
            # A per-id row holds the teacher's K ids and the completion's; top-K asks for prompt_logprobs ids.
            teacher = teacher_width(requests)
            width = self.settings.prompt_logprobs or teacher
            self._load(max(width, teacher))
            size = self.settings.batch_size
            for start in range(0, len(scored), size):
                chunk = scored[start:start + size]
                prompts = [
                    self._vllm.TokensPrompt(prompt_token_ids=[*requests[i].prompt_ids, *requests[i].completion_ids]) for i in chunk
                ]
                outputs = self._llm.generate(prompts, [self._params(requests[i], width) for i in chunk], use_tqdm=False)
                for i, output in zip(chunk, outputs):
                    results[i] = self._result(requests[i], output, width)
        return [results[i] for i in range(len(requests))]

    def close(self) -> None:
        self._llm = None
