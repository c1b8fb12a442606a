"""snapshots stage: checkpoint folder -> prompts.jsonl (teacher and student prompts per sample)."""

from __future__ import annotations

import argparse
import logging
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from memdistill import fileio, params
from memdistill.errors import UserError
from memdistill.feedback import DEFAULT_FAILURE_PATTERNS, is_failure
from memdistill.prompts import (
    TokenCounter,
    estimate_tokens,
    render_content,
    render_entry,
    student_messages,
    teacher_messages,
)
from memdistill.prompts import fit_to_budget
from memdistill.redact import Redactor
from memdistill.snapshot import MemoryEntry, Snapshot, find_snapshot, load_snapshot
from memdistill.strategies import StrategyParams, build_memory_view, get_strategy

log = logging.getLogger(__name__)

STUDENT_VIEWS = ("observation_only", "teacher")
SELECTIONS = ("first", "last", "random")
# Chat-template tokens around each message (role markers, end-of-turn); a small constant is enough.
TEMPLATE_TOKENS_PER_MESSAGE = 5


@dataclass
class SnapshotsConfig:
    checkpoint_dir: str = "data/checkpoints/ep_000200"
    snapshot: str = "latest"
    strategy: str = "exclude_current"
    window_k: int = 12
    max_memory_samples: int = 8
    failure_patterns: list[str] = field(default_factory=lambda: list(DEFAULT_FAILURE_PATTERNS))
    max_prompt_tokens: int | None = None
    tokenizer: str | None = None
    system_prompt: str = "You are a helpful agent."
    student_view: str = "observation_only"
    max_samples: int | None = None
    sample_selection: str = "first"
    seed: int = 0
    redact_patterns: list[str] = field(default_factory=list)

    def validate(self) -> None:
        get_strategy(self.strategy)
        if self.window_k < 1:
            raise UserError(f"window_k: must be at least 1, got {self.window_k}")
        if self.student_view not in STUDENT_VIEWS:
            raise UserError(f"student_view: expected one of {', '.join(STUDENT_VIEWS)}, got '{self.student_view}'")
        if self.sample_selection not in SELECTIONS:
            raise UserError(f"sample_selection: expected one of {', '.join(SELECTIONS)}, got '{self.sample_selection}'")
        if self.max_samples is not None and self.max_samples < 1:
            raise UserError(f"max_samples: must be at least 1, got {self.max_samples}")
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 1:
            raise UserError(f"max_prompt_tokens: must be at least 1, got {self.max_prompt_tokens}")


def token_counter(tokenizer_name: str | None) -> TokenCounter:
    if not tokenizer_name:
        return estimate_tokens
    from memdistill.models import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_name)
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def select_samples(count: int, max_samples: int | None, selection: str, seed: int) -> list[int]:
    indices = list(range(count))
    if max_samples is None or max_samples >= count:
        return indices
    if selection == "first":
        return indices[:max_samples]
    if selection == "last":
        return indices[-max_samples:]
    return sorted(random.Random(seed).sample(indices, max_samples))


def as_ranges(indices: tuple[int, ...]) -> list[list[int]]:
    """[0,1,2,5,6] -> [[0,2],[5,6]] (inclusive ranges), compact enough for 20,000-entry views."""
    ranges: list[list[int]] = []
    for index in indices:
        if ranges and ranges[-1][1] == index - 1:
            ranges[-1][1] = index
        else:
            ranges.append([index, index])
    return ranges


def redact_snapshot(snapshot: Snapshot, redactor: Redactor) -> tuple[Snapshot, dict[int, int]]:
    """Apply redaction to every entry; returns the new snapshot and the count replaced per entry."""
    if not redactor.patterns:
        return snapshot, {}
    counts: dict[int, int] = {}
    entries = []
    for entry in snapshot.entries:
        content, n = redactor.content(entry.content)
        if n:
            counts[entry.index] = n
        entries.append(MemoryEntry(entry.index, entry.type, content))
    from memdistill.snapshot import split_samples

    new_entries = tuple(entries)
    return Snapshot(snapshot.path, snapshot.sha256, new_entries, split_samples(new_entries)), counts


def build_prompts(snapshot: Snapshot, config: SnapshotsConfig, count_tokens: TokenCounter) -> list[dict[str, Any]]:
    redactor = Redactor.compile(config.redact_patterns)
    snapshot, redactions = redact_snapshot(snapshot, redactor)
    failed = [is_failure(s.feedback.content if s.feedback else None, config.failure_patterns) for s in snapshot.samples]
    strategy_params = StrategyParams(config.window_k, config.max_memory_samples, tuple(config.failure_patterns))
    lines = [render_entry(entry) for entry in snapshot.entries]
    line_tokens: list[int] | None = None
    if config.max_prompt_tokens is not None:
        line_tokens = [count_tokens(line + "\n") for line in lines]
    system_for_count = teacher_messages(config.system_prompt, [], "")[0].content
    system_tokens = count_tokens(system_for_count) if config.max_prompt_tokens is not None else 0

    rows = []
    chosen = select_samples(len(snapshot.samples), config.max_samples, config.sample_selection, config.seed)
    for sample_idx in chosen:
        sample = snapshot.samples[sample_idx]
        view = build_memory_view(config.strategy, snapshot, sample, strategy_params, failed)
        observation = render_content(sample.observation.content)
        dropped = 0
        if line_tokens is not None:
            fixed = system_tokens + count_tokens(teacher_messages("", [], observation)[1].content)
            fixed += 2 * TEMPLATE_TOKENS_PER_MESSAGE
            dropped = fit_to_budget([line_tokens[i] for i in view], fixed, config.max_prompt_tokens)
            view = view[dropped:]
        memory_lines = [lines[i] for i in view]
        teacher = teacher_messages(config.system_prompt, memory_lines, observation)
        if config.student_view == "teacher":
            student = teacher
        else:
            student = student_messages(config.system_prompt, observation)
        missing = [name for name, entry in (("action", sample.action), ("feedback", sample.feedback)) if entry is None]
        metadata = {
            "strategy": config.strategy,
            "strategy_params": {
                "window_k": config.window_k,
                "max_memory_samples": config.max_memory_samples,
                "max_prompt_tokens": config.max_prompt_tokens,
            },
            "snapshot": snapshot.path.name,
            "snapshot_sha256": snapshot.sha256,
            "memory_entries": as_ranges(view),
            "memory_size_entries": len(view),
            "memory_size_chars": sum(len(line) for line in memory_lines),
            "dropped_for_budget": dropped,
            "reference_action": render_content(sample.action.content) if sample.action else None,
            "reference_feedback": render_content(sample.feedback.content) if sample.feedback else None,
            "failed": failed[sample_idx],
            "missing": missing,
            "redactions": sum(redactions.get(i, 0) for i in set(view) | set(sample.entry_indices)),
        }
        rows.append(
            {
                "sample_idx": sample_idx,
                "teacher_messages": [m.to_dict() for m in teacher],
                "student_messages": [m.to_dict() for m in student],
                "metadata": metadata,
            }
        )
    return rows


def run(config: SnapshotsConfig, output: Path, count_tokens: Callable[[str], int] | None = None) -> int:
    config.validate()
    fileio.ensure_parent(output)
    path = find_snapshot(config.checkpoint_dir, config.snapshot)
    snapshot = load_snapshot(path)
    counter = count_tokens or (token_counter(config.tokenizer) if config.max_prompt_tokens is not None else estimate_tokens)
    rows = build_prompts(snapshot, config, counter)
    with fileio.atomic_output(output) as handle:
        for row in rows:
            handle.write(fileio.dump_json_line(row))
    log.info("wrote %d prompts from %s (%s) to %s", len(rows), path, config.strategy, output)
    return len(rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint-dir", help="episode checkpoint folder holding memory_<id>.jsonl files")
    parser.add_argument("--strategy", help="memory formation strategy: full_memory, exclude_current, rolling_window, failure_focus")
    parser.add_argument("--output", required=True, type=Path, help="where to write prompts.jsonl")
    parser.add_argument("--window-k", type=int, help="entries kept by rolling_window")
    parser.add_argument("--max-samples", type=int, help="keep at most N samples (see sample_selection)")
    parser.add_argument("--snapshot", help="'latest' (highest id) or a file name such as memory_000100.jsonl")
    parser.add_argument("--params", type=Path, help="params.yaml to read the 'snapshots' section from")


def main(args: argparse.Namespace) -> int:
    flags = {
        "checkpoint_dir": args.checkpoint_dir,
        "strategy": args.strategy,
        "window_k": args.window_k,
        "max_samples": args.max_samples,
        "snapshot": args.snapshot,
    }
    source = f"{args.params} [snapshots]" if args.params else "snapshots flags"
    merged = params.merge(asdict(SnapshotsConfig()), params.load_section(args.params, "snapshots"), flags)
    config = params.build_config(SnapshotsConfig, merged, source)
    run(config, args.output)
    return 0
