"""The generate stage's engine: ask the teacher for every prompt once, record it, write the dataset."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memdistill import __version__
from memdistill.core import fileio, shards
from memdistill.core.errors import UserError
from memdistill.core.lineage import VERSION_KEY, teacher_lineage
from memdistill.core.prompt_file import PromptRow
from memdistill.generate.progress import SampleProgress
from memdistill.generate.response_store import ResponseStore, request_key, run_id
from memdistill.generate.teachers.base import Completion, Failure, Teacher, TeacherRequest

log = logging.getLogger(__name__)

DATASET_TYPE = "memory_distillation"


@dataclass
class GenerateSummary:
    """What a generate run did (`requests`, `cache_hits`, `retries`, `wall_seconds`: this run) and what the
    dataset it wrote cost (`input_tokens`, `output_tokens`, `generation_seconds`: every answer in it, summed
    from the cost each recorded when the teacher first produced it, so a run served from the cache still
    reports what its answers took)."""

    samples: int = 0
    requests: int = 0
    cache_hits: int = 0
    retries: int = 0
    failures: int = 0
    output_tokens: int = 0
    input_tokens: int = 0
    generation_seconds: float = 0.0
    wall_seconds: float = 0.0
    new_output_tokens: int = 0

    def add_answer(self, completion: Completion) -> None:
        self.input_tokens += completion.input_tokens
        self.output_tokens += completion.output_tokens
        self.generation_seconds += completion.duration

    def to_metrics(self) -> dict[str, Any]:
        new_tokens_per_s = self.new_output_tokens / self.wall_seconds if self.wall_seconds > 0 else 0.0
        return {
            "samples": self.samples,
            "requests_sent": self.requests,
            "answers_from_cache": self.cache_hits,
            "retries": self.retries,
            "failures": self.failures,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "generation_seconds_total": round(self.generation_seconds, 3),
            "wall_seconds": round(self.wall_seconds, 3),
            "tokens_per_second": round(new_tokens_per_s, 2),
        }


def dataset_row(prompt: PromptRow, completion: Completion, teacher: dict[str, Any]) -> dict[str, Any]:
    """One line of the intermediate JSONL (see the README's Data formats)."""
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
    served_by = completion.extra.get("base_url")
    # With several servers, the row names the one that answered it (credentials were stripped earlier).
    row_teacher = {**teacher, "base_url": served_by} if served_by else teacher
    metadata = {
        "sample_idx": prompt.sample_idx,
        # Token counts only: a timing would make every run's dataset (and the parquet after it) differ;
        # timings are in metrics/generate.json.
        "metrics": {
            "input_tokens": completion.input_tokens,
            "output_tokens": completion.output_tokens,
        },
        "teacher": row_teacher,
        "finish_reason": completion.finish_reason,
        VERSION_KEY: __version__,
        **{key: value for key, value in prompt.metadata.items() if key not in {"sample_idx", "metrics", "teacher", VERSION_KEY}},
    }
    return {"messages": messages, "system_prompt": system_prompt, "metadata": metadata, "type": DATASET_TYPE}


def failures_path(output: Path) -> Path:
    """Where the samples that failed after every retry are listed: beside the output."""
    return output.with_name(output.name + ".failures.jsonl")


async def _collect(
    teacher: Teacher,
    pending: list[TeacherRequest],
    keys: dict[int, str],
    store: ResponseStore,
    summary: GenerateSummary,
    run: str,
    failures: list[Failure],
) -> None:
    max_tokens = int(teacher.describe().get("max_tokens") or 1)
    try:
        with SampleProgress(len(pending), max_tokens) as progress:
            if hasattr(teacher, "on_tokens"):
                teacher.on_tokens = progress.tokens  # a teacher that streams its tokens moves the bar within a batch
            async for result in teacher.stream(pending):
                if isinstance(result, Failure):
                    failures.append(result)
                    summary.failures += 1
                    summary.retries += max(0, result.attempts - 1)
                    log.warning("sample %d failed after %d attempt(s): %s", result.sample_idx, result.attempts, result.error)
                    progress.finished(0, failed=True, retries=max(0, result.attempts - 1))
                else:
                    store.put(keys[result.sample_idx], result, run)
                    retries = max(0, int(result.extra.get("attempts", 1)) - 1)
                    summary.retries += retries
                    summary.new_output_tokens += result.output_tokens
                    progress.finished(result.output_tokens, retries=retries)
    finally:
        if hasattr(teacher, "on_tokens"):
            teacher.on_tokens = None
        await teacher.aclose()


def _write_failures(path: Path, failures: list[Failure]) -> None:
    if not failures:
        path.unlink(missing_ok=True)  # a stale list from an earlier run would mislead
        return
    with fileio.atomic_output(path) as handle:
        for failure in sorted(failures, key=lambda f: f.sample_idx):
            handle.write(fileio.dump_json_line({"sample_idx": failure.sample_idx, "attempts": failure.attempts, "error": failure.error}))


def generate_dataset(
    prompts: list[PromptRow],
    teacher: Teacher,
    output: Path,
    store_dir: Path,
    use_cache: bool = True,
    max_failure_rate: float = 0.0,
    parts: int = 1,
    output_format: str = "jsonl",
) -> GenerateSummary:
    """Ask `teacher` for every prompt not already answered, then write `output` in input order.

    With `use_cache`, any stored response to the same request is reused. Without it, only responses
    from an interrupted earlier attempt at this same run (same output, same requests) are reused, so
    `--no-cache` still resumes after a crash but never reuses answers from other runs. With `parts` > 1,
    `output` is a shard directory of that many `part-NNNNN.jsonl` files holding the rows in the same order;
    `output_format: parquet` writes the same records as parquet (`memdistill.core.intermediate_parquet`).
    """
    fileio.ensure_parent(output)
    described = teacher.describe()
    keys = {row.sample_idx: request_key(described, row.teacher_messages) for row in prompts}
    described = {**described, **teacher_lineage(described)}
    run = run_id(output, list(keys.values()))
    store = ResponseStore(store_dir).open()
    summary = GenerateSummary(samples=len(prompts))
    failures: list[Failure] = []
    started = time.perf_counter()
    try:
        reusable = None if use_cache else store.completed_by_run(run)
        pending = []
        for row in prompts:
            key = keys[row.sample_idx]
            if store.get(key) is not None and (reusable is None or key in reusable):
                summary.cache_hits += 1
            else:
                pending.append(TeacherRequest(row.sample_idx, row.teacher_messages))
        summary.requests = len(pending)
        log.info("%d prompts: %d already answered, %d to request", len(prompts), summary.cache_hits, len(pending))
        if pending:
            asyncio.run(_collect(teacher, pending, keys, store, summary, run, failures))
        summary.wall_seconds = time.perf_counter() - started
        failed_file = failures_path(output)
        _write_failures(failed_file, failures)
        if summary.failures and summary.failures / max(1, len(prompts)) > max_failure_rate:
            raise UserError(
                f"generate: {summary.failures} of {len(prompts)} samples failed (max_failure_rate {max_failure_rate}), "
                f"e.g. sample {failures[0].sample_idx}: {failures[0].error}; all errors in {failed_file}; "
                f"run again to retry only those"
            )
        failed = {failure.sample_idx for failure in failures}
        # Failed within the allowed rate: left out, listed in the failures file.
        answered = [(row, completion) for row in prompts
                    if row.sample_idx not in failed and (completion := store.get(keys[row.sample_idx])) is not None]
        for _, completion in answered:
            summary.add_answer(completion)
        records = (dataset_row(row, completion, described) for row, completion in answered)
        shards.write_records(output, records, len(answered), parts, output_format)
        store.finish_run(run)
    finally:
        store.close()
    return summary
