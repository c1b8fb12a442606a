"""The `openai` backend: any OpenAI-compatible chat-completions server, through the official async client.

Three flavors differ only in how exact token ids come back:
- `tokasaurus`: `extra_body={"logprobs_in_fingerprint": True}` makes the server put packed numpy arrays
  (base64) in `system_fingerprint`; the generated ids include the EOS token, which we keep with its row.
- `vllm`: `return_tokens_as_token_ids` turns every token string into `"token_id:<id>"`.
- `openai`: plain token strings (plus `bytes`); ids are recovered later by `convert`.

The client's own retries are off: this module retries with exponential backoff and jitter, spreads requests
over several servers, and takes a server that stops answering out of rotation for a growing cool-down.

Why one module of ~570 lines: a request's whole life (endpoint choice, the call, retry and cool-down, each
flavor's id recovery) is read top to bottom here, and the gain stage's served engine reuses the same client.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import logging
import os
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from memdistill.core.errors import UserError
from memdistill.generate.teachers.base import Completion, Failure, SamplingParams, TeacherRequest

log = logging.getLogger(__name__)

FLAVORS = ("tokasaurus", "vllm", "openai")
TOKEN_ID_STRING = re.compile(r"^token_id:(-?\d+)$")
# A server asking us to wait longer than this is treated as this; the run should not stall for hours.
MAX_RETRY_AFTER = 120.0
MAX_BACKOFF = 30.0
# Statuses that may succeed when asked again (request timeout, conflict, rate limit, server errors).
RETRYABLE_STATUSES = {408, 409, 425, 429}
# This many refusals (4xx) before any success stop the run: every other sample would be refused alike.
CONFIGURATION_ERROR_STREAK = 3


def public_url(url: str) -> str:
    """The URL without user:password, query or fragment, so no credential reaches metadata or logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class TransientError(Exception):
    """A failure worth retrying (malformed or truncated body, server error, rate limit, timeout)."""

    def __init__(self, message: str, retry_after: float | None = None, endpoint_down: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.endpoint_down = endpoint_down


class PermanentError(Exception):
    """A failure of this request that asking again will not change (a 4xx such as a too-long prompt)."""


def backoff_delay(attempt: int, base: float, retry_after: float | None, rng: random.Random) -> float:
    """Exponential backoff with 'equal jitter' (half fixed, half random), at least what Retry-After asks."""
    ceiling = min(MAX_BACKOFF, base * (2**attempt))
    delay = ceiling / 2 + rng.uniform(0, ceiling / 2)
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
    return delay


def parse_retry_after(headers: Any) -> float | None:
    """Seconds from `retry-after-ms` or `retry-after` (seconds form; the HTTP-date form is ignored)."""
    if headers is None:
        return None
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) / divisor)
        except ValueError:
            continue
    return None


# ---------------------------------------------------------------------------------------------------------
# Response decoding: pure functions from the parsed JSON body to (text, token_ids, per-token logprobs).


def _unpack(encoded: str, dtype: type, what: str) -> np.ndarray:
    try:
        return np.frombuffer(base64.b64decode(encoded), dtype=dtype)
    except (ValueError, TypeError) as exc:
        raise TransientError(f"tokasaurus: {what} is not base64 {np.dtype(dtype).name} ({exc})") from None


NOT_PACKED = (
    "flavor tokasaurus: system_fingerprint holds no packed logprobs (completion_ids, packed_*); the server ignored "
    "logprobs_in_fingerprint: run a Tokasaurus version that supports it, or use --flavor vllm/openai for other servers"
)


def decode_tokasaurus(fingerprint: Any, choice_index: int, top_k: int) -> tuple[list[int], list[dict[str, Any]]]:
    """Ids and logprobs from Tokasaurus' packed `system_fingerprint` (one list entry per choice)."""
    if not isinstance(fingerprint, str):
        raise UserError(NOT_PACKED)
    try:
        packed = json.loads(fingerprint)
    except ValueError as exc:
        if fingerprint.lstrip().startswith("{"):
            raise TransientError(f"tokasaurus: system_fingerprint is cut short ({exc})") from None
        raise UserError(NOT_PACKED) from None  # e.g. OpenAI's "fp_..." identifiers
    if not isinstance(packed, dict) or "completion_ids" not in packed:
        raise UserError(NOT_PACKED)
    try:
        ids = [int(i) for i in packed["completion_ids"][choice_index]]
        chosen = _unpack(packed["packed_chosen_logprobs"][choice_index], np.float32, "packed_chosen_logprobs")
        if top_k > 0 or packed.get("packed_topk_indices"):
            top_ids = _unpack(packed["packed_topk_indices"][choice_index], np.int32, "packed_topk_indices")
            top_values = _unpack(packed["packed_topk_logprobs"][choice_index], np.float32, "packed_topk_logprobs")
        else:  # top_logprobs 0: the exact ids and chosen logprobs still come, no top-k arrays
            top_ids = top_values = np.empty(0, dtype=np.float32)
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise TransientError(f"tokasaurus: malformed system_fingerprint ({type(exc).__name__}: {exc})") from None
    steps = len(ids)
    if chosen.size != steps:
        raise TransientError(f"tokasaurus: {steps} completion_ids but {chosen.size} chosen logprobs")
    width = top_ids.size // steps if steps else 0
    if steps and (top_ids.size != steps * width or top_values.size != top_ids.size):
        raise TransientError(f"tokasaurus: top-k arrays of sizes {top_ids.size}/{top_values.size} are not [{steps}, K]")
    top_ids = top_ids.reshape(steps, width)[:, :top_k]
    top_values = top_values.reshape(steps, width)[:, :top_k]
    chosen_list = chosen.astype(np.float64).tolist()
    top_id_rows = top_ids.tolist()
    top_value_rows = top_values.astype(np.float64).tolist()
    content = []
    for t, token in enumerate(ids):
        content.append(
            {
                "token": f"token_id:{token}",
                "logprob": chosen_list[t],
                "token_id": token,
                "top_logprobs": [
                    {"token": f"token_id:{tid}", "logprob": value, "token_id": tid}
                    for tid, value in zip(top_id_rows[t], top_value_rows[t])
                ],
            }
        )
    return ids, content


def _entry(item: dict[str, Any], exact_ids: bool, flavor: str) -> dict[str, Any]:
    token = item.get("token")
    out: dict[str, Any] = {"token": token, "logprob": float(item["logprob"]), "token_id": None}
    if exact_ids:
        match = TOKEN_ID_STRING.match(token) if isinstance(token, str) else None
        if match is None:
            raise UserError(
                f"flavor {flavor}: token {token!r} is not of the form 'token_id:<id>'; the server ignored "
                "return_tokens_as_token_ids — is it vLLM? otherwise use --flavor openai"
            )
        out["token_id"] = int(match.group(1))
    elif item.get("bytes") is not None:
        # With token ids vLLM sends the bytes of the literal "token_id:N" string: not the token's, so not kept.
        out["bytes"] = list(item["bytes"])
    return out


def keep_top_k(entries: list[dict[str, Any]], chosen_id: int | None, k: int) -> list[dict[str, Any]]:
    """The K most likely alternatives, plus the sampled token's own entry when it is not among them.

    vLLM at T > 0 puts the sampled token first and cuts the list to the requested count, so a row asked
    for K can hold K-1 real alternatives; the vllm flavor asks for K+1 and keeps this."""
    ranked = sorted(entries, key=lambda entry: -entry["logprob"])
    kept = ranked[:k]
    if chosen_id is not None and all(entry["token_id"] != chosen_id for entry in kept):
        kept += [entry for entry in ranked[k:] if entry["token_id"] == chosen_id][:1]
    return kept


def decode_logprob_content(
    content: Any, flavor: str, exact_ids: bool, keep: int | None = None
) -> tuple[list[int] | None, list[dict[str, Any]]]:
    """OpenAI-shape `logprobs.content` → our per-token dicts; ids exact when the server sent `token_id:N`.
    `keep`: cut each row to that many alternatives plus the sampled token's own entry (keep_top_k)."""
    if not isinstance(content, list):
        raise TransientError(f"{flavor}: logprobs.content is {type(content).__name__}, expected a list")
    tokens = []
    try:
        for item in content:
            entry = _entry(item, exact_ids, flavor)
            entry["top_logprobs"] = [_entry(top, exact_ids, flavor) for top in item.get("top_logprobs") or []]
            if keep is not None:
                entry["top_logprobs"] = keep_top_k(entry["top_logprobs"], entry["token_id"], keep)
            tokens.append(entry)
    except (KeyError, TypeError, ValueError) as exc:
        raise TransientError(f"{flavor}: malformed logprobs entry ({type(exc).__name__}: {exc})") from None
    ids = [entry["token_id"] for entry in tokens] if exact_ids else None
    return ids, tokens


NO_LOGPROBS_HINT = {
    "vllm": "start vLLM with --max-logprobs at least top_logprobs",
    "openai": "use a server/model that supports logprobs (vLLM --max-logprobs, SGLang, OpenAI chat models), or set top_logprobs: 0",
    "tokasaurus": "run a Tokasaurus version that supports logprobs_in_fingerprint",
}


def requested_top_logprobs(flavor: str, sampling: SamplingParams) -> int:
    """What to ask the server for: K, or K+1 from vLLM when sampling (its sampled token takes a slot)."""
    if flavor == "vllm" and sampling.temperature > 0 and sampling.top_logprobs > 0:
        return sampling.top_logprobs + 1
    return sampling.top_logprobs


def decode_response(body: dict[str, Any], flavor: str, top_logprobs: int, keep: int | None = None) -> dict[str, Any]:
    """The parts of one chat-completion body we keep: text, ids, logprobs, finish reason, usage."""
    try:
        choice = body["choices"][0]
        message = choice.get("message") or {}
        text = message.get("content") or ""
        finish = choice.get("finish_reason") or "unknown"
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise TransientError(f"response has no choices[0].message ({type(exc).__name__}: {exc})") from None
    usage = body.get("usage") or {}
    ids: list[int] | None = None
    tokens: list[dict[str, Any]] | None = None
    if flavor == "tokasaurus":
        # Asked for even at top_logprobs 0: the fingerprint still carries the exact completion_ids.
        ids, tokens = decode_tokasaurus(body.get("system_fingerprint"), 0, top_logprobs)
    elif top_logprobs > 0:
        logprobs = choice.get("logprobs")
        if not logprobs or logprobs.get("content") is None:
            raise UserError(
                f"flavor {flavor}: the server returned no logprobs although logprobs=True, top_logprobs="
                f"{top_logprobs} were sent; {NO_LOGPROBS_HINT[flavor]}"
            )
        ids, tokens = decode_logprob_content(logprobs["content"], flavor, exact_ids=flavor == "vllm", keep=keep)
    output_tokens = usage.get("completion_tokens")
    if not isinstance(output_tokens, int):
        output_tokens = len(tokens) if tokens is not None else 0
    input_tokens = usage.get("prompt_tokens")
    return {
        "text": text,
        "token_ids": ids,
        "logprobs": tokens,
        "finish_reason": finish,
        "input_tokens": input_tokens if isinstance(input_tokens, int) else 0,
        "output_tokens": output_tokens,
    }


# ---------------------------------------------------------------------------------------------------------
# Endpoints: spreading and taking a dead server out of rotation.


@dataclass
class Endpoint:
    url: str  # as given, may carry credentials; used only to build the client
    public: str
    client: Any
    in_flight: int = 0
    consecutive_failures: int = 0
    down_until: float = 0.0


T = TypeVar("T")


@dataclass
class Answered(Generic[T]):
    """A request that succeeded: what the attempt returned, from which server, after how many tries."""

    value: T
    base_url: str
    attempts: int
    duration: float


class EndpointPool:
    """Least-loaded choice among the servers in rotation; a failing one sits out a doubling cool-down."""

    def __init__(self, endpoints: list[Endpoint], cooldown: float) -> None:
        self.endpoints = endpoints
        self.cooldown = cooldown
        self._turn = 0

    async def acquire(self) -> Endpoint:
        while True:
            now = time.monotonic()
            alive = [e for e in self.endpoints if e.down_until <= now]
            if alive:
                self._turn += 1
                # Rotating the start makes ties (the common case at equal load) spread round-robin.
                start = self._turn % len(alive)
                rotated = alive[start:] + alive[:start]
                chosen = min(rotated, key=lambda e: e.in_flight)
                chosen.in_flight += 1
                return chosen
            # Every server is cooling down: wait for the first to come back and try it again.
            await asyncio.sleep(max(0.0, min(e.down_until for e in self.endpoints) - now))

    def release(self, endpoint: Endpoint, ok: bool, down: bool) -> None:
        endpoint.in_flight -= 1
        if ok:
            if endpoint.consecutive_failures and endpoint.down_until:
                log.info("%s answers again; back in rotation", endpoint.public)
            endpoint.consecutive_failures = 0
            endpoint.down_until = 0.0
        elif down:
            endpoint.consecutive_failures += 1
            pause = min(MAX_BACKOFF, self.cooldown * 2 ** (endpoint.consecutive_failures - 1))
            endpoint.down_until = time.monotonic() + pause
            if len(self.endpoints) > 1:
                log.warning("%s unreachable; out of rotation for %.1fs", endpoint.public, pause)


# ---------------------------------------------------------------------------------------------------------


class OpenAITeacher:
    def __init__(
        self,
        model: str,
        base_urls: Sequence[str],
        flavor: str,
        sampling: SamplingParams,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 16,
        timeout: float = 120.0,
        max_retries: int = 5,
        retry_backoff: float = 0.5,
        rng_seed: int | None = None,
    ) -> None:
        if flavor not in FLAVORS:
            raise UserError(f"flavor: expected one of {', '.join(FLAVORS)}, got '{flavor}'")
        if not base_urls:
            raise UserError("base_url: the openai backend needs at least one server URL (--base-url)")
        for url in base_urls:
            if urlsplit(url).scheme not in {"http", "https"}:
                raise UserError(f"base_url: '{public_url(url)}' is not an http(s) URL")
        if concurrency < 1:
            raise UserError(f"concurrency: must be at least 1, got {concurrency}")
        if flavor == "tokasaurus" and sampling.logprobs == "raw" and sampling.temperature > 0:
            raise UserError("logprobs: Tokasaurus sends tempered logprobs only (softmax(logits/T)); use logprobs: tempered")
        if max_retries < 0:
            raise UserError(f"max_retries: must be >= 0, got {max_retries}")
        self.model = model
        self.base_urls = list(base_urls)
        self.flavor = flavor
        self.sampling = sampling
        self.api_key_env = api_key_env
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self._rng = random.Random(rng_seed)
        self._pool: EndpointPool | None = None

    def describe(self) -> dict[str, Any]:
        public = [public_url(u) for u in self.base_urls]
        return {
            "backend": "openai",
            "flavor": self.flavor,
            "model": self.model,
            "base_url": public[0] if len(public) == 1 else public,
            **self.sampling.to_dict(),
        }

    def request_body(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        """Keyword arguments for `chat.completions.create` (exposed for tests and the benchmark)."""
        s = self.sampling
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "seed": s.seed,
            "n": 1,
        }
        extra: dict[str, Any] = {}
        if self.flavor == "tokasaurus":
            extra["logprobs_in_fingerprint"] = True  # exact completion_ids even at top_logprobs 0
        if s.top_logprobs > 0:
            kwargs["logprobs"] = True
            kwargs["top_logprobs"] = requested_top_logprobs(self.flavor, s)
            if self.flavor == "vllm":
                extra["return_tokens_as_token_ids"] = True
        if extra:
            kwargs["extra_body"] = extra
        return kwargs

    def _make_pool(self) -> EndpointPool:
        from openai import AsyncOpenAI

        if not log.isEnabledFor(logging.DEBUG):
            # The HTTP client logs every request at INFO: thousands of lines that would bury the progress bar.
            for name in ("httpx", "httpx2", "httpcore", "httpcore2", "openai"):
                logging.getLogger(name).setLevel(logging.WARNING)

        # Local servers usually need no key; the client insists on one, so a placeholder goes instead.
        api_key = os.environ.get(self.api_key_env) or "EMPTY"
        endpoints = [
            Endpoint(url, public_url(url), AsyncOpenAI(api_key=api_key, base_url=url, timeout=self.timeout, max_retries=0))
            for url in self.base_urls
        ]
        return EndpointPool(endpoints, cooldown=self.retry_backoff)

    async def _attempt(self, endpoint: Endpoint, body: dict[str, Any]) -> dict[str, Any]:
        parsed = await self.post(endpoint, endpoint.client.chat.completions, body)
        keep = self.sampling.top_logprobs if requested_top_logprobs(self.flavor, self.sampling) != self.sampling.top_logprobs else None
        return decode_response(parsed, self.flavor, self.sampling.top_logprobs, keep)

    async def post(self, endpoint: Endpoint, resource: Any, body: dict[str, Any]) -> dict[str, Any]:
        """`resource.create(**body)` on one server (chat or plain completions) as a JSON object; failures
        classified as retryable, refused, or a setup error every request would hit."""
        import openai

        try:
            raw = await resource.with_raw_response.create(**body)
            payload = raw.http_response.content
        except openai.APITimeoutError:
            raise TransientError(f"{endpoint.public}: timed out after {self.timeout}s", endpoint_down=True) from None
        except openai.APIConnectionError as exc:
            cause = exc.__cause__ or exc
            raise TransientError(f"{endpoint.public}: connection failed ({type(cause).__name__}: {cause})", endpoint_down=True) from None
        except openai.APIStatusError as exc:
            status = exc.status_code
            detail = _short(server_reason(exc))
            if status in (401, 403):
                raise UserError(
                    f"{endpoint.public} refused the request ({status}): check the API key in ${self.api_key_env}"
                ) from None
            if status == 404:
                raise UserError(
                    f"{endpoint.public}: not found (404) for model '{self.model}': {detail}; check --base-url (usually ends in /v1) and --model"
                ) from None
            if status >= 500 or status in RETRYABLE_STATUSES:
                raise TransientError(f"{endpoint.public}: HTTP {status}: {detail}", retry_after=parse_retry_after(exc.response.headers)) from None
            raise PermanentError(f"{endpoint.public}: HTTP {status}: {detail}") from None
        try:
            parsed = json.loads(payload)
        except ValueError as exc:
            raise TransientError(f"{endpoint.public}: response body is not complete JSON ({exc})") from None
        if not isinstance(parsed, dict):
            raise TransientError(f"{endpoint.public}: response body is not a JSON object")
        return parsed

    async def complete(self, request: TeacherRequest) -> Completion | Failure:
        """One request with retries; raises UserError for problems every request would have."""
        body = self.request_body(request.messages)
        answer = await self.with_retries(request.sample_idx, lambda endpoint: self._attempt(endpoint, body))
        if isinstance(answer, Failure):
            return answer
        return Completion(
            sample_idx=request.sample_idx,
            duration=answer.duration,
            extra={"attempts": answer.attempts, "base_url": answer.base_url},
            **answer.value,
        )

    async def with_retries(self, sample_idx: int, attempt_on: Callable[[Endpoint], Awaitable[T]]) -> Answered[T] | Failure:
        """`attempt_on(server)` until it succeeds, on the least-loaded server in rotation, with backoff; a
        refusal (4xx) or max_retries transient failures give a Failure. The gain stage's vLLM scorer calls
        this too, for the completions endpoint."""
        if self._pool is None:
            self._pool = self._make_pool()
        attempt = 0
        while True:
            endpoint = await self._pool.acquire()
            started = time.perf_counter()
            ok = down = False
            try:
                value = await attempt_on(endpoint)
                ok = True
            except TransientError as exc:
                down = exc.endpoint_down
                error: str = str(exc)
                retry_after = exc.retry_after
            except PermanentError as exc:
                return Failure(sample_idx, str(exc), attempt + 1, permanent=True)
            finally:
                self._pool.release(endpoint, ok, down)
            if ok:
                return Answered(value, endpoint.public, attempt + 1, time.perf_counter() - started)
            if attempt >= self.max_retries:
                return Failure(sample_idx, error, attempt + 1)
            delay = backoff_delay(attempt, self.retry_backoff, retry_after, self._rng)
            log.debug("sample %d attempt %d failed (%s); retrying in %.2fs", sample_idx, attempt + 1, error, delay)
            attempt += 1
            await asyncio.sleep(delay)

    async def stream(self, requests: Sequence[TeacherRequest]) -> AsyncIterator[Completion | Failure]:
        todo = collections.deque(requests)
        done: asyncio.Queue[Completion | Failure | BaseException] = asyncio.Queue()

        async def worker() -> None:
            while todo:
                request = todo.popleft()
                try:
                    done.put_nowait(await self.complete(request))
                except Exception as exc:  # handed to the consumer, which raises it
                    done.put_nowait(exc)
                    return

        workers = [asyncio.create_task(worker()) for _ in range(min(self.concurrency, len(requests)))]
        answered = 0
        refused: list[Failure] = []
        try:
            for _ in range(len(requests)):
                item = await done.get()
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, Failure) and item.permanent:
                    refused.append(item)
                    stop_on_configuration_error(refused, answered)
                elif isinstance(item, Completion):
                    answered += 1
                yield item
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def aclose(self) -> None:
        if self._pool is not None:
            for endpoint in self._pool.endpoints:
                await endpoint.client.close()
            self._pool = None


def server_reason(exc: Any) -> str:
    """The server's own words for a refused request: the body's `detail` (FastAPI, Tokasaurus) or `message`
    (OpenAI, vLLM), not the client's bare "Error code: 400"."""
    bodies = [getattr(exc, "body", None)]
    response = getattr(exc, "response", None)
    try:
        bodies.append(json.loads(response.text) if response is not None else None)
    except (ValueError, AttributeError, TypeError):
        bodies.append(response.text if response is not None and getattr(response, "text", "") else None)
    for body in bodies:
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            body = body["error"]
        if isinstance(body, dict):
            for key in ("detail", "message"):
                value = body.get(key)
                if value:
                    return value if isinstance(value, str) else json.dumps(value)
        elif isinstance(body, str) and body.strip():
            return body
    return str(getattr(exc, "message", exc))


def stop_on_configuration_error(refused: list[Failure], answered: int) -> None:
    """The first CONFIGURATION_ERROR_STREAK answers all refused (4xx), none served: the request itself is
    wrong (top_logprobs above the server's limit, an unknown field, top_p on Tokasaurus); stop the run."""
    if answered == 0 and len(refused) >= CONFIGURATION_ERROR_STREAK:
        raise UserError(
            f"the server refused the first {len(refused)} requests and answered none: {refused[0].error}; "
            f"this is a configuration error (check top_logprobs against the server's limit, top_p, the model name)"
        )


def _short(message: str, limit: int = 200) -> str:
    text = " ".join(str(message).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
