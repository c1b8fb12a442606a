"""The generate stage's engine: ask the teacher for every prompt once, record it, write the dataset."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from memdistill import fileio
from memdistill.errors import UserError
from memdistill.prompt_file import PromptRow
from memdistill.response_store import ResponseStore, request_key
from memdistill.teachers.base import Completion, Failure, Teacher, TeacherRequest

log = logging.getLogger(__name__)

DATASET_TYPE = "memory_distillation"


@dataclass
class GenerateSummary:
    samples: int = 0
    requests: int = 0
    cache_hits: int = 0
    retries: int = 0
    failures: int = 0
    output_tokens: int = 0
    input_tokens: int = 0
    wall_seconds: float = 0.0
    failed_samples: list[int] = field(default_factory=list)

    def to_metrics(self) -> dict[str, Any]:
        new_tokens_per_s = self.output_tokens / self.wall_seconds if self.wall_seconds > 0 else 0.0
        return {
            "samples": self.samples,
            "requests": self.requests,
            "cache_hits": self.cache_hits,
            "retries": self.retries,
            "failures": self.failures,
            "output_tokens": self.output_tokens,
            "input_tokens": self.input_tokens,
            "wall_seconds": round(self.wall_seconds, 3),
            "tokens_per_second": round(new_tokens_per_s, 2),
        }


def dataset_row(prompt: PromptRow, completion: Completion, teacher: dict[str, Any]) -> dict[str, Any]:
    """One line of the intermediate JSONL (DESIGN §3)."""
    messages: list[dict[str, Any]] = [
        {"role": m["role"], "content": m["content"], "token_ids": None, "logprobs": None} for m in prompt.student_messages
    ]
    messages.append(
        {
            "role": "assistant",
            "content": completion.text,
            "token_ids": completion.token_ids,
            "logprobs": {"content": completion.logprobs} if completion.logprobs is not None else None,
        }
    )
    system_prompt = next((m["content"] for m in prompt.teacher_messages if m["role"] == "system"), "")
    metadata = {
        "sample_idx": prompt.sample_idx,
        "metrics": {
            "duration": round(completion.duration, 4),
            "input_tokens": completion.input_tokens,
            "output_tokens": completion.output_tokens,
        },
        "teacher": teacher,
        "finish_reason": completion.finish_reason,
        **{key: value for key, value in prompt.metadata.items() if key not in {"sample_idx", "metrics", "teacher"}},
    }
    return {"messages": messages, "system_prompt": system_prompt, "metadata": metadata, "type": DATASET_TYPE}


async def _collect(
    teacher: Teacher, pending: list[TeacherRequest], keys: dict[int, str], store: ResponseStore, summary: GenerateSummary
) -> None:
    with tqdm(total=len(pending), desc="generate", unit="req", dynamic_ncols=True) as bar:
        async for result in teacher.stream(pending):
            if isinstance(result, Failure):
                summary.failures += 1
                summary.failed_samples.append(result.sample_idx)
                log.warning("sample %d failed after %d attempt(s): %s", result.sample_idx, result.attempts, result.error)
            else:
                store.put(keys[result.sample_idx], result)
                summary.output_tokens += result.output_tokens
                summary.input_tokens += result.input_tokens
            bar.update(1)
    await teacher.aclose()


def generate_dataset(
    prompts: list[PromptRow],
    teacher: Teacher,
    output: Path,
    store_dir: Path,
    use_cache: bool = True,
    max_failure_rate: float = 0.0,
) -> GenerateSummary:
    fileio.ensure_parent(output)
    described = teacher.describe()
    keys = {row.sample_idx: request_key(described, row.teacher_messages) for row in prompts}
    store = ResponseStore(store_dir).open()
    summary = GenerateSummary(samples=len(prompts))
    started = time.perf_counter()
    try:
        pending = []
        for row in prompts:
            if use_cache and store.get(keys[row.sample_idx]) is not None:
                summary.cache_hits += 1
            else:
                pending.append(TeacherRequest(row.sample_idx, row.teacher_messages))
        summary.requests = len(pending)
        log.info("%d prompts: %d from the cache, %d to request", len(prompts), summary.cache_hits, len(pending))
        if pending:
            asyncio.run(_collect(teacher, pending, keys, store, summary))
    finally:
        store.close()
    summary.wall_seconds = time.perf_counter() - started
    if summary.failures and summary.failures / max(1, len(prompts)) > max_failure_rate:
        raise UserError(
            f"generate: {summary.failures} of {len(prompts)} samples failed (max_failure_rate {max_failure_rate}); "
            f"failed sample_idx: {summary.failed_samples[:10]}; re-run to retry only those"
        )
    with fileio.atomic_output(output) as handle:
        for row in prompts:
            completion = store.get(keys[row.sample_idx])
            if completion is None:
                continue  # failed within the allowed rate; listed in the summary
            handle.write(fileio.dump_json_line(dataset_row(row, completion, described)))
    return summary
