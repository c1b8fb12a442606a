"""What the gain stage scores: the dataset's samples, paired with the prompts they were generated from.

The teacher's completion and top-k are read with convert's own row reader (at min_prob_mass 1, so every
recorded entry is kept), so a scored position t is the parquet's assistant token t: the same exact-id
recovery, the same end-of-turn appended, the same samples rejected.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from memdistill.convert.conversion import iter_outcomes
from memdistill.convert.engine import Engine
from memdistill.convert.mass import FlatLogprobs, reconstruct
from memdistill.convert.outcomes import ConvertSummary, SampleRejected
from memdistill.convert.records import iter_records
from memdistill.core import shards
from memdistill.core.errors import UserError
from memdistill.core.prompt_file import PromptRow, read_prompts

# Prompt metadata generate copies into each dataset row unchanged (it replaces these three itself).
_OWN_KEYS = {"sample_idx", "metrics", "teacher"}


@dataclass(frozen=True, slots=True)
class Teacher:
    """The generating teacher as the dataset records it (metadata.teacher)."""

    backend: str | None
    flavor: str | None
    model: str | None
    temperature: float
    logprobs: str
    # The server(s) that answered (openai backend); not compared: with several servers each row names its own.
    base_url: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def of(cls, metadata: dict[str, Any]) -> "Teacher":
        teacher = metadata.get("teacher")
        teacher = teacher if isinstance(teacher, dict) else {}
        temperature = teacher.get("temperature")
        urls = teacher.get("base_url")
        urls = [urls] if isinstance(urls, str) else urls if isinstance(urls, list) else []
        return cls(
            backend=teacher.get("backend") if isinstance(teacher.get("backend"), str) else None,
            flavor=teacher.get("flavor") if isinstance(teacher.get("flavor"), str) else None,
            model=teacher.get("model") if isinstance(teacher.get("model"), str) else None,
            temperature=float(temperature) if isinstance(temperature, (int, float)) and not isinstance(temperature, bool) else 0.0,
            logprobs=teacher.get("logprobs") if teacher.get("logprobs") in ("tempered", "raw") else "tempered",
            base_url=tuple(u for u in urls if isinstance(u, str)),
        )


@dataclass(slots=True)
class Sample:
    key: int
    where: str
    student_messages: list[dict[str, str]]
    completion_ids: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    teacher_lp: np.ndarray = field(default_factory=lambda: np.empty((0, 0)))  # float64 [T, K], -inf padding
    teacher_ids: np.ndarray = field(default_factory=lambda: np.empty((0, 0), dtype=np.int64))  # -1 padding
    rejected: str | None = None  # why convert would leave the sample out


def dataset_records(dataset: Path) -> Iterator[tuple[str, Any]]:
    """(where, record) over a dataset file or every part of a shard directory, in order."""
    for part in shards.part_files(dataset):
        yield from iter_records(part)


def first_teacher(dataset: Path) -> Teacher:
    for _, record in dataset_records(dataset):
        metadata = record.get("metadata") if isinstance(record, dict) else None
        return Teacher.of(metadata if isinstance(metadata, dict) else {})
    raise UserError(f"{dataset}: no samples (the file is empty)")


class Pairing:
    """Checks, record by record, that the dataset is what generate wrote from `prompts`: every sample is one
    of the prompts, in the prompts' order, with the same student messages and the same prompt metadata
    (strategy, snapshot, memory view...). Samples missing from the dataset (failed within
    generate.max_failure_rate) are allowed."""

    def __init__(self, prompts_path: Path) -> None:
        self.prompts_path = prompts_path
        self.rows = read_prompts(prompts_path)
        self.position = {row.sample_idx: number for number, row in enumerate(self.rows)}
        self.last = -1
        self.teacher: Teacher | None = None

    def _refuse(self, where: str, key: Any, why: str) -> UserError:
        return UserError(
            f"{where}: sample {key} does not match {self.prompts_path} ({why}): the dataset was generated from other "
            f"prompts; run generate again (dvc repro)"
        )

    def check(self, where: str, record: Any) -> tuple[int, dict[str, Any], PromptRow]:
        """(the sample's key, its metadata, its prompt row); a mismatch is one UserError naming the sample."""
        if not isinstance(record, dict) or not isinstance(record.get("messages"), list):
            raise UserError(f"{where}: expected an object with 'messages'")
        metadata = record.get("metadata")
        metadata = metadata if isinstance(metadata, dict) else {}
        key = metadata.get("sample_idx")
        if type(key) is not int:
            raise UserError(f"{where}: metadata.sample_idx: expected an integer (the sample's key), got {key!r}")
        number = self.position.get(key)
        if number is None:
            raise self._refuse(where, key, "no prompt has this sample_idx")
        if number <= self.last:
            raise self._refuse(where, key, "samples are in another order")
        self.last = number
        prompt = self.rows[number]
        student = [{"role": m.get("role"), "content": m.get("content") or ""} for m in record["messages"]
                   if isinstance(m, dict) and m.get("role") != "assistant"]
        if student != prompt.student_messages:
            differs = next((m["role"] for m, p in zip(student, prompt.student_messages) if m != p), "messages")
            raise self._refuse(where, key, f"its {differs} message differs")
        for name, value in prompt.metadata.items():
            if name not in _OWN_KEYS and metadata.get(name) != value:
                raise self._refuse(where, key, f"metadata.{name} is {_short(metadata.get(name))} here, {_short(value)} there")
        teacher = Teacher.of(metadata)
        if self.teacher is None:
            self.teacher = teacher
        elif teacher != self.teacher:
            raise UserError(f"{where}: sample {key} was generated by another teacher ({teacher}) than the first sample "
                            f"({self.teacher}); a dataset is scored with the one model that generated it")
        return key, metadata, prompt


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def read_samples(pairing: Pairing, engine: Engine | None, part: Path) -> Iterator[Sample]:
    """Every sample of one dataset file (or part), checked against the prompts; with `engine`, its completion
    and top-k as convert reads them (without one, e.g. for a teacher that cannot score, only the keys)."""
    outcomes = iter_outcomes(part, engine) if engine is not None else None
    for where, record in iter_records(part):
        key, _, prompt = pairing.check(where, record)
        sample = Sample(key, where, prompt.student_messages)
        if outcomes is not None:
            outcome = next(outcomes)
            if isinstance(outcome, SampleRejected):
                sample.rejected = outcome.reason
            elif outcome is None:
                sample.rejected = "rejected"
            else:
                _fill_completion(sample, outcome)
        yield sample


def _fill_completion(sample: Sample, row: Any) -> None:
    assistant = next((m for m in reversed(row.messages) if m.role == "assistant"), None)
    if assistant is None:
        sample.rejected = "no assistant message"
        return
    sample.completion_ids = np.asarray(assistant.token_ids, dtype=np.int64)
    top = assistant.top
    if top is None or not sample.completion_ids.size:
        return
    lp, ids = reconstruct(FlatLogprobs(top.token_idx, top.token_id, top.logprobs, tuple(top.shape)))
    sample.teacher_lp, sample.teacher_ids = lp.astype(np.float64), ids


def reading_converter(model: str, append_eot: bool) -> Engine:
    """Convert's engine keeping every recorded entry (min_prob_mass 1), never failing on a bad sample."""
    from memdistill.convert.token_ids import load_text_tokenizer

    return Engine(load_text_tokenizer(model), 1.0, False, ConvertSummary(tokenizer=model), append_eot)
