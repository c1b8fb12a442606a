"""The embedded teacher: SmolLM2-135M-Instruct in-process on CPU, batched, exact ids and logprobs."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from memdistill.models import EMBEDDED_MODEL, is_embedded, load_embedded_model, load_tokenizer
from memdistill.errors import UserError
from memdistill.progress import StepCounter
from memdistill.teachers.base import Completion, Failure, SamplingParams, TeacherRequest


class LocalTeacher:
    on_tokens: Callable[[int], None] | None = None  # told the tokens generated at each decoding step (progress bar)

    def __init__(self, model: str, sampling: SamplingParams, batch_size: int = 8) -> None:
        if not is_embedded(model):
            raise UserError(f"model: the local backend runs only '{EMBEDDED_MODEL}', got '{model}'; use --backend openai for others")
        if batch_size < 1:
            raise UserError(f"batch_size: must be at least 1, got {batch_size}")
        self.model_name = EMBEDDED_MODEL
        self.sampling = sampling
        self.batch_size = batch_size
        self._tokenizer: Any = None
        self._model: Any = None
        self._pieces: dict[int, str] = {}

    def describe(self) -> dict[str, Any]:
        return {"backend": "local", "flavor": None, "model": self.model_name, "base_url": None,
                "batch_size": self.batch_size, **self.sampling.to_dict()}

    def _load(self) -> None:
        if self._model is None:
            self._tokenizer = load_tokenizer(self.model_name)
            self._model = load_embedded_model()

    def _encode(self, requests: Sequence[TeacherRequest]) -> list[list[int]]:
        encoded = []
        for request in requests:
            ids = self._tokenizer.apply_chat_template(request.messages, add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            encoded.append(list(ids))
        return encoded

    def generate_batch(self, requests: Sequence[TeacherRequest]) -> list[Completion]:
        """Generate for one batch; left padding keeps every prompt's last token aligned."""
        import torch

        self._load()
        tokenizer, model = self._tokenizer, self._model
        started = time.perf_counter()
        prompts = self._encode(requests)
        width = max(len(p) for p in prompts)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, ids in enumerate(prompts):
            input_ids[row, width - len(ids):] = torch.tensor(ids)
            attention[row, width - len(ids):] = 1
        eos_ids = self._eos_ids()
        sampling = self.sampling
        do_sample = sampling.temperature > 0
        torch.manual_seed(sampling.seed)
        with torch.inference_mode():
            output = model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                max_new_tokens=sampling.max_tokens,
                do_sample=do_sample,
                temperature=sampling.temperature if do_sample else None,
                top_p=sampling.top_p if do_sample else None,
                top_k=None,
                pad_token_id=pad_id,
                eos_token_id=sorted(eos_ids),
                output_scores=True,
                output_logits=sampling.logprobs == "raw",
                return_dict_in_generate=True,
                streamer=StepCounter(self.on_tokens, eos_ids) if self.on_tokens else None,
            )
        # scores[t] are the processed logits the sampler drew step t from (after temperature and top_p), so
        # their log-softmax is exactly the distribution each token was sampled from (tempered); logits[t] are
        # the model's own, before any of that (raw). [batch, steps, vocab]; equal at temperature 0.
        steps = output.logits if sampling.logprobs == "raw" else output.scores
        logprobs = torch.log_softmax(torch.stack(steps, dim=1).float(), dim=-1)
        k = max(1, sampling.top_logprobs)
        top_values, top_indices = torch.topk(logprobs, k=k, dim=-1)
        generated = output.sequences[:, width:]
        elapsed = time.perf_counter() - started
        completions = []
        for row, request in enumerate(requests):
            ids = generated[row].tolist()
            length, finish = len(ids), "length"
            for position, token in enumerate(ids):
                if token in eos_ids:
                    length, finish = position + 1, "stop"  # the EOS stays, with the row it was drawn from
                    break
            ids = ids[:length]
            chosen = logprobs[row, torch.arange(length), torch.tensor(ids, dtype=torch.long)].tolist() if length else []
            row_top_ids = top_indices[row, :length].tolist()
            row_top_values = top_values[row, :length].tolist()
            content = []
            for position, token in enumerate(ids):
                entry: dict[str, Any] = {"token": self._piece(token), "logprob": chosen[position], "token_id": token}
                # top_p masks tokens to -inf: they had no chance under the sampler, and JSON has no -inf.
                entry["top_logprobs"] = [
                    {"token": self._piece(tid), "logprob": value, "token_id": tid}
                    for tid, value in zip(row_top_ids[position], row_top_values[position])
                    if math.isfinite(value)
                ] if sampling.top_logprobs > 0 else []
                content.append(entry)
            text = tokenizer.decode(ids, skip_special_tokens=True)
            completions.append(
                Completion(
                    sample_idx=request.sample_idx,
                    text=text,
                    token_ids=ids,
                    logprobs=content,
                    finish_reason=finish,
                    input_tokens=len(prompts[row]),
                    output_tokens=length,
                    duration=elapsed / len(requests),
                )
            )
        return completions

    def _piece(self, token_id: int) -> str:
        """The token's text, memoised: a dataset decodes the same few thousand ids over and over."""
        piece = self._pieces.get(token_id)
        if piece is None:
            piece = self._pieces[token_id] = self._tokenizer.decode([token_id])
        return piece

    def _eos_ids(self) -> set[int]:
        ids = {self._tokenizer.eos_token_id}
        configured = getattr(self._model.generation_config, "eos_token_id", None)
        if isinstance(configured, int):
            ids.add(configured)
        elif configured:
            ids.update(configured)
        im_end = self._tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end >= 0:
            ids.add(im_end)
        return {i for i in ids if i is not None}

    async def stream(self, requests: Sequence[TeacherRequest]) -> AsyncIterator[Completion | Failure]:
        # Sorting by prompt length keeps padding (wasted compute) small inside each batch.
        ordered = sorted(requests, key=lambda r: sum(len(m["content"]) for m in r.messages))
        for start in range(0, len(ordered), self.batch_size):
            batch = ordered[start : start + self.batch_size]
            for completion in await asyncio.to_thread(self.generate_batch, batch):
                yield completion

    async def aclose(self) -> None:
        return None
