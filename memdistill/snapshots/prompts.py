"""The HistoryAgent prompt shape (teacher view: memory + observation; student view: no memory), the agent's
system prompt, and the token counters the budget (memdistill.snapshots.budget) uses."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from memdistill.core.errors import UserError
from memdistill.snapshots.checkpoint import MemoryEntry

MEMORY_INSTRUCTION = (
    "You will be given the previous experiences you've had and their feedback. "
    "You should use this feedback to improve your performance in the subsequent actions."
)
MEMORY_HEADER = "Here is a list of your previous experiences:"
EMPTY_MEMORY = "No previous experiences."
CURRENT_HEADER = "Here is the current observation:"
# The agent's system prompt when neither a flag, params.yaml nor the checkpoint gives one.
DEFAULT_SYSTEM_PROMPT = "You are a helpful agent."
# A checkpoint folder may hold its agent's system prompt in this file.
CHECKPOINT_SYSTEM_PROMPT = "system_prompt.txt"

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


def _read_prompt_file(path: Path, what: str) -> str:
    try:
        text = path.read_text(encoding="utf-8-sig").strip()
    except FileNotFoundError:
        raise UserError(f"{path}: {what} not found") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: {what} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not text:
        raise UserError(f"{path}: {what} is empty")
    return text


def resolve_system_prompt(text: str | None, file: str | None, checkpoint_dir: str | Path) -> tuple[str, str]:
    """The agent's system prompt and where it came from: `system_prompt` text, `system_prompt_file`, the
    checkpoint's system_prompt.txt, or the generic default, in that order."""
    if text is not None:
        if not text.strip():
            raise UserError("system_prompt: is empty; give the agent's system prompt or null")
        return text, "system_prompt"
    if file is not None:
        return _read_prompt_file(Path(file), "system_prompt_file"), f"file:{file}"
    candidate = Path(checkpoint_dir) / CHECKPOINT_SYSTEM_PROMPT
    if candidate.is_file():
        return _read_prompt_file(candidate, CHECKPOINT_SYSTEM_PROMPT), f"checkpoint:{candidate}"
    return DEFAULT_SYSTEM_PROMPT, "default"


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
