"""The HistoryAgent prompt shape: teacher view (memory + observation) and student view (no memory)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from memdistill.snapshot import MemoryEntry

MEMORY_INSTRUCTION = (
    "You will be given the previous experiences you've had and their feedback. "
    "You should use this feedback to improve your performance in the subsequent actions."
)
MEMORY_HEADER = "Here is a list of your previous experiences:"
EMPTY_MEMORY = "No previous experiences."
CURRENT_HEADER = "Here is the current observation:"

TokenCounter = Callable[[str], int]


def estimate_tokens(text: str) -> int:
    """Fallback when the teacher's tokenizer is unknown: about four characters per token, rounded up."""
    return (len(text) + 3) // 4


def render_content(content: str | dict[str, Any]) -> str:
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


def fit_to_budget(
    line_tokens: Sequence[int], fixed_tokens: int, max_prompt_tokens: int | None
) -> int:
    """How many of the oldest memory lines to drop so the prompt fits `max_prompt_tokens`.

    `line_tokens[i]` is the cost of memory line i (its newline included); `fixed_tokens` is everything
    else. Returns the count dropped from the front; the observation itself is never dropped.
    """
    if max_prompt_tokens is None:
        return 0
    total = fixed_tokens + sum(line_tokens)
    dropped = 0
    while total > max_prompt_tokens and dropped < len(line_tokens):
        total -= line_tokens[dropped]
        dropped += 1
    return dropped
