"""Reading prompts.jsonl (the snapshots stage's output) with per-line validation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memdistill.core.errors import UserError
from memdistill.core.fileio import read_jsonl

ROLES = {"system", "user", "assistant"}


@dataclass(frozen=True, slots=True)
class PromptRow:
    sample_idx: int
    teacher_messages: list[dict[str, str]]
    student_messages: list[dict[str, str]]
    metadata: dict[str, Any]


def _messages(value: Any, where: str, name: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise UserError(f"{where}: '{name}' must be a non-empty list of messages")
    for number, message in enumerate(value):
        if (
            not isinstance(message, dict)
            or message.get("role") not in ROLES
            or not isinstance(message.get("content"), str)
        ):
            raise UserError(f"{where}: {name}[{number}] must be {{'role': system|user|assistant, 'content': string}}")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def read_prompts(path: Path) -> list[PromptRow]:
    rows: list[PromptRow] = []
    seen: set[int] = set()
    for lineno, raw in read_jsonl(path):
        where = f"{path}:{lineno}"
        if not isinstance(raw, dict):
            raise UserError(f"{where}: expected an object with sample_idx, teacher_messages, student_messages")
        sample_idx = raw.get("sample_idx")
        if not isinstance(sample_idx, int) or isinstance(sample_idx, bool):
            raise UserError(f"{where}: 'sample_idx' must be an integer")
        if sample_idx in seen:
            raise UserError(f"{where}: sample_idx {sample_idx} appears twice")
        seen.add(sample_idx)
        metadata = raw.get("metadata", {})
        if not isinstance(metadata, dict):
            raise UserError(f"{where}: 'metadata' must be an object")
        rows.append(
            PromptRow(
                sample_idx=sample_idx,
                teacher_messages=_messages(raw.get("teacher_messages"), where, "teacher_messages"),
                student_messages=_messages(raw.get("student_messages"), where, "student_messages"),
                metadata=metadata,
            )
        )
    if not rows:
        raise UserError(f"{path}: no prompts (the file is empty)")
    return rows
