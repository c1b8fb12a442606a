"""Gain scoring on an OpenAI-compatible vLLM server: the completions endpoint's prompt scoring.

One request per sample to `/v1/completions` with `prompt` = the student prompt's ids followed by the
teacher's completion ids (a list of ids, so the server tokenises nothing), `max_tokens: 1`, and vLLM's own
`prompt_logprobs: K`. The answer's `choices[0].prompt_logprobs` holds, per prompt position, the K best ids
and the prompt's own token as {"<id>": {"logprob", "rank", "decoded_token"}} (null at position 0); the
shared reader (prompt_logprobs.py) turns that into log q for the teacher's ids and the bound for the rest.

The client, retries, server pool and API key handling are the openai teacher's (OpenAITeacher.with_retries).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from memdistill.core.errors import UserError
from memdistill.gain.engines.base import ScoreRequest, ScoreResult, ScoringSettings
from memdistill.gain.engines.prompt_logprobs import ScoringMismatch, completion_positions, refuse_tempered, score_result
from memdistill.generate.teachers.base import Failure, SamplingParams
from memdistill.generate.teachers.openai_compat import Endpoint, OpenAITeacher, TransientError

log = logging.getLogger(__name__)

NO_PROMPT_LOGPROBS = (
    "openai-vllm: the server answered without choices[0].prompt_logprobs; it is not vLLM, or too old to score "
    "prompts: score with the generating vLLM server, or run the gain stage with gain.backend local on the embedded teacher"
)


def prompt_logprobs_k(top_k: int, asked: int | None = None) -> int:
    """K for prompt_logprobs: `asked` (gain.prompt_logprobs), else the teacher's top-k width; at least 1 (what
    vLLM's --max-logprobs must allow)."""
    return max(1, asked or top_k)


def parse_prompt_logprobs(body: Any) -> list[Mapping[int, float] | None]:
    """choices[0].prompt_logprobs of a completions body as, per prompt position, {id: logprob} (None at 0)."""
    try:
        choice = body["choices"][0]
    except (KeyError, IndexError, TypeError) as exc:
        raise TransientError(f"openai-vllm: response has no choices[0] ({type(exc).__name__}: {exc})") from None
    positions = choice.get("prompt_logprobs") if isinstance(choice, dict) else None
    if positions is None:
        raise UserError(NO_PROMPT_LOGPROBS)
    try:
        return [
            None if position is None else {int(token_id): float(entry["logprob"]) for token_id, entry in position.items()}
            for position in positions
        ]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise TransientError(f"openai-vllm: malformed prompt_logprobs entry ({type(exc).__name__}: {exc})") from None


class OpenAIVLLMScorer:
    """Scores on the generating vLLM server(s) (generate.base_url), `settings.concurrency` requests at a time."""

    name = "openai-vllm"

    def __init__(self, model: str, settings: ScoringSettings) -> None:
        if not settings.base_url:
            raise UserError("gain.base_url: the dataset was generated on a vLLM server; name it (--base-url URL) to score there")
        self.model = model
        self.settings = settings
        # The teacher brings the validated URLs, the pool, retries and the API key; it never generates here.
        self._client = OpenAITeacher(
            model,
            list(settings.base_url),
            "vllm",
            SamplingParams(max_tokens=1, temperature=0.0, top_logprobs=0),
            api_key_env=settings.api_key_env,
            concurrency=settings.concurrency,
            timeout=settings.timeout,
            max_retries=settings.max_retries,
        )

    def describe(self) -> dict[str, Any]:
        public = self._client.describe()["base_url"]
        # vLLM's completions endpoint scores prompts by its top-K only (no per-id prompt scoring).
        return {"engine": self.name, "model": self.model, "base_url": public, "scoring": "top-k"}

    def request_body(self, request: ScoreRequest) -> dict[str, Any]:
        """Keyword arguments for `completions.create` (exposed for tests)."""
        return {
            "model": self.model,
            "prompt": [*request.prompt_ids, *request.completion_ids],
            "max_tokens": 1,
            "temperature": 0.0,
            "extra_body": {"prompt_logprobs": prompt_logprobs_k(request.topk_ids.shape[-1], self.settings.prompt_logprobs)},
        }

    async def _score_one(self, request: ScoreRequest) -> ScoreResult | Failure:
        body = self.request_body(request)

        async def attempt(endpoint: Endpoint) -> ScoreResult:
            parsed = await self._client.post(endpoint, endpoint.client.completions, body)
            positions = parse_prompt_logprobs(parsed)
            try:
                entries = completion_positions(positions, request)
            except ScoringMismatch as exc:
                raise UserError(f"openai-vllm: {exc}") from None
            return score_result(request, entries, body["extra_body"]["prompt_logprobs"])

        answer = await self._client.with_retries(request.key, attempt)
        return answer if isinstance(answer, Failure) else answer.value

    async def _score_all(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        """Every request, `concurrency` at a time; a sample that cannot be scored after the retries stops the
        stage (a gain missing for some samples would bias every figure built on it)."""
        results: dict[int, ScoreResult] = {}
        todo = iter(range(len(requests)))

        async def worker() -> None:
            for index in todo:
                outcome = await self._score_one(requests[index])
                if isinstance(outcome, Failure):
                    hint = " (refused: check prompt_logprobs against the server's --max-logprobs, and the model name)" if outcome.permanent else ""
                    raise UserError(
                        f"openai-vllm: sample {outcome.sample_idx} could not be scored after {outcome.attempts} attempt(s): {outcome.error}{hint}"
                    )
                results[index] = outcome

        workers = [asyncio.create_task(worker()) for _ in range(min(self.settings.concurrency, len(requests)))]
        try:
            await asyncio.gather(*workers)
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            await self._client.aclose()
        return [results[i] for i in range(len(requests))]

    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        refuse_tempered(self.settings)
        return asyncio.run(self._score_all(requests)) if requests else []

    def close(self) -> None:
        return None

