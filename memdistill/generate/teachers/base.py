"""The teacher interface: prompts in, completions with per-token top-k logprobs out."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class SamplingParams:
    max_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_logprobs: int = 20
    seed: int = 0
    # tempered: log softmax(logits / T), the distribution sampled from | raw: log softmax(logits). Equal at T = 0.
    logprobs: str = "tempered"

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_logprobs": self.top_logprobs,
            "seed": self.seed,
            "logprobs": self.logprobs,
        }


@dataclass(frozen=True, slots=True)
class TeacherRequest:
    sample_idx: int
    messages: list[dict[str, str]]


@dataclass(slots=True)
class Completion:
    """What the teacher produced for one request.

    `logprobs` is the OpenAI `logprobs.content` list, one dict per generated token:
    {"token", "logprob", "token_id", "top_logprobs": [{"token", "logprob", "token_id"}, ...]}; `token_id`
    is None where the teacher gives no exact id. `token_ids` are the generated ids when known.
    """

    sample_idx: int
    text: str
    token_ids: list[int] | None
    logprobs: list[dict[str, Any]] | None
    finish_reason: str
    input_tokens: int
    output_tokens: int
    duration: float
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Failure:
    sample_idx: int
    error: str
    attempts: int
    # The server refused the request itself (a 4xx): asking again, or asking with another prompt, fails alike.
    permanent: bool = False


class Teacher(Protocol):
    """A source of completions. `stream` yields results in completion order, one per request."""

    def describe(self) -> dict[str, Any]:
        """Backend, model and sampling settings for the metadata (never credentials)."""
        ...

    def stream(self, requests: Sequence[TeacherRequest]) -> AsyncIterator[Completion | Failure]: ...

    async def aclose(self) -> None: ...
