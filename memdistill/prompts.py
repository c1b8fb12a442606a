"""The HistoryAgent prompt shape (teacher view: memory + observation; student view: no memory) and the
token budget that trims the memory to fit `max_prompt_tokens`."""

from __future__ import annotations

import bisect
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from memdistill.snapshot import MemoryEntry

MEMORY_INSTRUCTION = (
    "You will be given the previous experiences you've had and their feedback. "
    "You should use this feedback to improve your performance in the subsequent actions."
)
MEMORY_HEADER = "Here is a list of your previous experiences:"
EMPTY_MEMORY = "No previous experiences."
CURRENT_HEADER = "Here is the current observation:"

# Without a tokenizer, each chat message costs about this many template tokens (role markers, end of turn).
TEMPLATE_TOKENS_PER_MESSAGE = 5

TokenCounter = Callable[[str], int]


def estimate_tokens(text: str) -> int:
    """Fallback when the teacher's tokenizer is unknown: about four characters per token, rounded up.

    English BPE tokenizers average 3.5–4.5 characters per token, so this errs slightly towards long
    prompts for prose and short ones for digits and non-ASCII text; name the teacher's tokenizer
    (`tokenizer:` in params.yaml) when the budget must hold exactly.
    """
    return (len(text) + 3) // 4


def render_content(content: str | dict[str, Any]) -> str:
    """Strings as they are; objects as compact JSON with non-ASCII kept readable."""
    if isinstance(content, dict):
        return json.dumps(content, ensure_ascii=False, separators=(",", ":"))
    return content


def render_entry(entry: MemoryEntry) -> str:
    return f"{entry.type.strip().upper()}: {render_content(entry.content)}"


def teacher_system_prompt(agent_system_prompt: str) -> str:
    return f"{agent_system_prompt}\n\n{MEMORY_INSTRUCTION}"


def teacher_user_prompt(memory_lines: Sequence[str], observation: str) -> str:
    memory = "\n".join(memory_lines) if memory_lines else EMPTY_MEMORY
    return "\n\n".join([MEMORY_HEADER, memory, CURRENT_HEADER, observation])


@dataclass(frozen=True, slots=True)
class Message:
    role: str
    content: str

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


def teacher_messages(agent_system_prompt: str, memory_lines: Sequence[str], observation: str) -> list[Message]:
    return [
        Message("system", teacher_system_prompt(agent_system_prompt)),
        Message("user", teacher_user_prompt(memory_lines, observation)),
    ]


def student_messages(agent_system_prompt: str, observation: str) -> list[Message]:
    return [Message("system", agent_system_prompt), Message("user", observation)]


class PromptCounter(Protocol):
    """Counts tokens the way the teacher will see them."""

    name: str

    def texts(self, texts: Sequence[str]) -> list[int]: ...

    def messages(self, messages: Sequence[Message]) -> int: ...


@dataclass(frozen=True)
class FunctionCounter:
    """A plain `str -> int` counter (the estimate, or one injected by tests) plus a per-message template cost."""

    count: TokenCounter
    name: str = "estimate"
    per_message: int = TEMPLATE_TOKENS_PER_MESSAGE

    def texts(self, texts: Sequence[str]) -> list[int]:
        return [self.count(text) for text in texts]

    def messages(self, messages: Sequence[Message]) -> int:
        return sum(self.count(m.content) + self.per_message for m in messages)


@dataclass(frozen=True)
class TokenizerCounter:
    """Counts with a transformers tokenizer; whole prompts go through its chat template when it has one,
    which is exactly what the embedded teacher feeds the model."""

    tokenizer: Any
    name: str
    batch_size: int = 1024

    def texts(self, texts: Sequence[str]) -> list[int]:
        counts: list[int] = []
        # Batches keep the fast tokenizer busy in Rust while bounding the id lists held at once.
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start : start + self.batch_size])
            counts.extend(len(ids) for ids in self.tokenizer(batch, add_special_tokens=False)["input_ids"])
        return counts

    def messages(self, messages: Sequence[Message]) -> int:
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(
                [m.to_dict() for m in messages], tokenize=False, add_generation_prompt=True
            )
            return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return sum(self.texts([m.content for m in messages])) + TEMPLATE_TOKENS_PER_MESSAGE * len(messages)


def view_cost(ranges: Sequence[tuple[int, int]], cumulative: Sequence[int]) -> int:
    """Total cost of the entries in half-open `ranges`; `cumulative[j]` is the cost of entries [0, j)."""
    return sum(cumulative[stop] - cumulative[start] for start, stop in ranges)


def entries_to_drop(ranges: Sequence[tuple[int, int]], cumulative: Sequence[int], allowed: int) -> int:
    """How many of the oldest entries of a view to drop so the rest costs at most `allowed`.

    `ranges` are the view's sorted half-open ranges of entry indices; `cumulative` is the running sum of
    per-entry costs (non-decreasing, costs >= 0), so each range is searched by bisection instead of
    entry by entry. Returns the number of entries in the view when even an empty memory is over.
    """
    excess = view_cost(ranges, cumulative) - allowed
    if excess <= 0:
        return 0
    dropped = 0
    for start, stop in ranges:
        cost = cumulative[stop] - cumulative[start]
        if cost < excess:
            excess -= cost
            dropped += stop - start
            continue
        # Smallest cut j in (start, stop] whose prefix [start, j) covers the excess.
        cut = bisect.bisect_left(cumulative, cumulative[start] + excess, lo=start + 1, hi=stop + 1)
        return dropped + (cut - start)
    return dropped
