"""The embedded teacher: SmolLM2-135M-Instruct in-process on CPU, batched, exact ids and logprobs."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from memdistill.core.errors import UserError
from memdistill.core.models import EMBEDDED_MODEL, chat_prompt_ids, is_embedded, load_embedded_model, load_tokenizer
from memdistill.generate.progress import StepCounter
from memdistill.generate.teachers.base import Completion, Failure, SamplingParams, TeacherRequest
from memdistill.generate.teachers.prefix_plan import plan_prefix_reuse

if TYPE_CHECKING:
    from memdistill.generate.teachers.prefix_cache import PrefixCache


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
        return [chat_prompt_ids(self._tokenizer, request.messages) for request in requests]

    def generate_batch(self, requests: Sequence[TeacherRequest]) -> list[Completion]:
        """Generate for one batch without any cache reuse; left padding keeps every prompt's last token aligned."""
        self._load()
        started = time.perf_counter()
        prompts = self._encode(requests)
        input_ids, attention = self._left_padded(prompts, len(max(prompts, key=len)))
        output = self._generate(input_ids, attention, cache=None)
        return self._completions(requests, prompts, output, input_ids.shape[1], time.perf_counter() - started)

    def generate_reusing_prefixes(self, requests: Sequence[TeacherRequest]) -> list[Completion]:
        """Generate for any number of requests, computing each shared token prefix once; results in input order."""
        self._load()
        prompts = self._encode(requests)
        results: dict[int, Completion] = {}
        for steps, completions in self._planned_batches(requests, prompts):
            for step, completion in zip(steps, completions):
                results[step] = completion
        return [results[i] for i in range(len(requests))]

    def _planned_batches(
        self, requests: Sequence[TeacherRequest], prompts: list[list[int]]
    ) -> Iterator[tuple[list[int], list[Completion]]]:
        """Run the requests in prefix-trie order, `batch_size` at a time: (request indices, their completions)."""
        plan = plan_prefix_reuse(prompts)
        previous: PrefixCache | None = None
        for steps in plan.batches(self.batch_size):
            indices = [plan.order[step] for step in steps]
            reused = [plan.reused[step] for step in steps]
            completions, previous = self._generate_with_reuse(
                [requests[i] for i in indices], [prompts[i] for i in indices], reused, previous
            )
            yield indices, completions

    def _generate_with_reuse(
        self,
        requests: list[TeacherRequest],
        prompts: list[list[int]],
        reused: list[int],
        previous: PrefixCache | None,
    ) -> tuple[list[Completion], PrefixCache | None]:
        """Prefill each prompt on top of its predecessor's cache (batch of one, no padding), then decode together.

        Row r's cache holds every prompt token but the last, right-aligned in a left-padded batch cache; the
        last tokens go through `model.generate`, so the scores and sampling are those of the plain path.
        """
        from memdistill.generate.teachers.prefix_cache import BatchCache

        started = time.perf_counter()
        width = max(len(p) for p in prompts) - 1
        if width == 0:  # one-token prompts: nothing to cache
            return self.generate_batch(requests), None
        batch = BatchCache(self._model.config, len(prompts), width, self._model.dtype)
        for row, (ids, reuse) in enumerate(zip(prompts, reused)):
            base = previous.slice(reuse) if previous is not None and reuse > 0 else None
            previous = batch.put(row, self._prefill(ids[:-1], base))
        carried = previous.clone() if previous is not None else None  # the next batch may share its prefix
        input_ids, attention = self._left_padded(prompts, width + 1)
        output = self._generate(input_ids, attention, cache=batch.into_dynamic_cache())
        completions = self._completions(requests, prompts, output, width + 1, time.perf_counter() - started)
        return completions, carried

    def _prefill(self, ids: list[int], base: PrefixCache | None) -> PrefixCache:
        """The cache of `ids` (one prompt), computing only the tokens past what `base` already holds."""
        import torch

        from memdistill.generate.teachers.prefix_cache import PrefixCache, cache_argument

        start = base.length if base is not None else 0
        if base is not None and start == len(ids):
            return base
        if base is not None:
            cache = base.to_dynamic_cache(self._model.config)
        else:
            from transformers import DynamicCache

            cache = DynamicCache(config=self._model.config)
        with torch.inference_mode():
            decoder = self._model.get_decoder()
            decoder(input_ids=torch.tensor([ids[start:]]), use_cache=True, **{cache_argument(decoder): cache})
        return PrefixCache.from_dynamic_cache(cache)

    def _left_padded(self, prompts: list[list[int]], width: int) -> tuple[Any, Any]:
        import torch

        pad_id = self._pad_id()
        input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, ids in enumerate(prompts):
            input_ids[row, width - len(ids):] = torch.tensor(ids)
            attention[row, width - len(ids):] = 1
        return input_ids, attention

    def _pad_id(self) -> int:
        tokenizer = self._tokenizer
        return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def _generate(self, input_ids: Any, attention: Any, cache: Any) -> Any:
        import torch

        from memdistill.generate.teachers.prefix_cache import cache_argument

        sampling = self.sampling
        do_sample = sampling.temperature > 0
        torch.manual_seed(sampling.seed)
        passed = {cache_argument(self._model): cache} if cache is not None else {}
        with torch.inference_mode():
            return self._model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                **passed,
                max_new_tokens=sampling.max_tokens,
                do_sample=do_sample,
                temperature=sampling.temperature if do_sample else None,
                top_p=sampling.top_p if do_sample else None,
                top_k=None,
                pad_token_id=self._pad_id(),
                eos_token_id=sorted(self._eos_ids()),
                output_scores=True,
                output_logits=sampling.logprobs == "raw",
                return_dict_in_generate=True,
                streamer=StepCounter(self.on_tokens, self._eos_ids()) if self.on_tokens else None,
            )

    def _completions(
        self, requests: Sequence[TeacherRequest], prompts: list[list[int]], output: Any, width: int, elapsed: float
    ) -> list[Completion]:
        import torch

        sampling, tokenizer, eos_ids = self.sampling, self._tokenizer, self._eos_ids()
        # scores[t] are the processed logits the sampler drew step t from (after temperature and top_p), so
        # their log-softmax is exactly the distribution each token was sampled from (tempered); logits[t] are
        # the model's own, before any of that (raw). [batch, steps, vocab]; equal at temperature 0.
        steps = output.logits if sampling.logprobs == "raw" else output.scores
        logprobs = torch.log_softmax(torch.stack(steps, dim=1).float(), dim=-1)
        k = max(1, sampling.top_logprobs)
        top_values, top_indices = torch.topk(logprobs, k=k, dim=-1)
        generated = output.sequences[:, width:]
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
        # Prompts sharing a prefix run next to each other and compute it once (see generate_reusing_prefixes).
        await asyncio.to_thread(self._load)
        prompts = await asyncio.to_thread(self._encode, requests)
        batches = self._planned_batches(requests, prompts)
        while (batch := await asyncio.to_thread(next, batches, None)) is not None:
            for completion in batch[1]:
                yield completion

    async def aclose(self) -> None:
        return None
