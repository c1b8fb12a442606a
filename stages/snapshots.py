"""snapshots stage: checkpoint folder -> prompts.jsonl (teacher and student prompts per sample).

Finds the snapshot (`snapshot: latest` = highest numeric id), splits it into samples, redacts, applies
the memory-formation strategy, trims the memory to `max_prompt_tokens` and streams one JSON line per
selected sample. Same inputs and params give a byte-identical file.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import logging
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from tqdm import tqdm

from memdistill import fileio, params
from memdistill.errors import UserError
from memdistill.feedback import DEFAULT_FAILURE_PATTERNS, compile_failure_patterns, is_failure
from memdistill.prompts import (
    EMPTY_MEMORY,
    FunctionCounter,
    Message,
    PromptCounter,
    TokenCounter,
    TokenizerCounter,
    entries_to_drop,
    estimate_tokens,
    render_content,
    render_entry,
    student_messages,
    teacher_messages,
    view_cost,
)
from memdistill.redact import Redactor
from memdistill.snapshot import SNAPSHOT_PATTERN, MemoryEntry, Snapshot, find_snapshot, load_snapshot, split_samples
from memdistill.strategies import MemoryView, StrategyParams, get_strategy, strategy_names

log = logging.getLogger(__name__)

STUDENT_VIEWS = ("observation_only", "teacher")
SELECTIONS = ("first", "last", "random")
# Tokens by which a memory line's cost counted alone may exceed its cost inside the prompt.
GIVE_BACK_SLACK = 8


class SnapshotsConfig(params.StageParams):
    section: ClassVar[str] = "snapshots"

    checkpoint_dir: str = Field("data/checkpoints/ep_000200", description="episode checkpoint folder holding memory_<id>.jsonl snapshots")
    snapshot: str = Field("latest", description="'latest' (highest numeric id) or a file name in checkpoint_dir such as memory_000100.jsonl")
    strategy: str = Field("exclude_current", description="memory formation: " + ", ".join(strategy_names()))
    window_k: int = Field(12, ge=1, description="rolling_window: entries before the current observation the teacher sees")
    max_memory_samples: int = Field(8, ge=0, description="failure_focus: past samples the teacher sees (failed first)")
    failure_patterns: list[str] | None = Field(
        default_factory=lambda: list(DEFAULT_FAILURE_PATTERNS), description="regexes (case-insensitive) marking text feedback as a failure"
    )
    max_prompt_tokens: int | None = Field(None, ge=1, description="longest teacher prompt in tokens; the oldest memory is dropped to fit (null = no limit)")
    tokenizer: str | None = Field(None, description="tokenizer counting prompt tokens (null = 4 characters per token)")
    system_prompt: str = Field("You are a helpful agent.", description="the agent's own system prompt")
    student_view: Literal[STUDENT_VIEWS] = Field("observation_only", description="training messages: observation_only (no memory) or teacher")
    max_samples: int | None = Field(None, ge=1, description="keep at most this many samples (null = all)")
    sample_selection: Literal[SELECTIONS] = Field("first", description="which samples max_samples keeps")
    seed: int = Field(0, description="seed for sample_selection: random")
    redact_patterns: list[str] | None = Field(default_factory=list, description="regexes whose matches become [REDACTED] (null = none)")

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        params.check_with(get_strategy, value)
        return value

    @field_validator("failure_patterns")
    @classmethod
    def _failure_regexes(cls, value: list[str] | None) -> list[str] | None:
        params.check_with(compile_failure_patterns, value)
        return value

    @field_validator("redact_patterns")
    @classmethod
    def _redact_regexes(cls, value: list[str] | None) -> list[str] | None:
        params.check_with(Redactor.compile, value)
        return value

    def strategy_params(self) -> StrategyParams:
        return StrategyParams(self.window_k, self.max_memory_samples, tuple(self.failure_patterns or ()))


@dataclass
class SnapshotsSummary:
    """What a run did, for the log line (and tests)."""

    samples_in_snapshot: int = 0
    rows: int = 0
    dropped_for_budget: int = 0
    over_budget: int = 0
    redactions: int = 0
    """Spans replaced in the whole snapshot (each row's metadata counts those in its own prompt)."""


def make_counter(config: SnapshotsConfig, count_tokens: TokenCounter | None = None) -> PromptCounter | None:
    """The token counter for the budget: injected, the named tokenizer, or the estimate; None without a budget."""
    if config.max_prompt_tokens is None:
        return None
    if count_tokens is not None:
        return FunctionCounter(count_tokens, name=getattr(count_tokens, "__name__", "custom"))
    if not config.tokenizer:
        return FunctionCounter(estimate_tokens, name="estimate")
    from memdistill.models import load_tokenizer

    return TokenizerCounter(load_tokenizer(config.tokenizer), name=config.tokenizer)


def select_samples(count: int, max_samples: int | None, selection: str, seed: int) -> list[int]:
    """Which sample numbers to keep, always in ascending order so the output order is stable."""
    if max_samples is None or max_samples >= count:
        return list(range(count))
    if selection == "first":
        return list(range(max_samples))
    if selection == "last":
        return list(range(count - max_samples, count))
    return sorted(random.Random(seed).sample(range(count), max_samples))


def redact_snapshot(snapshot: Snapshot, redactor: Redactor) -> tuple[Snapshot, list[int]]:
    """Apply redaction to every entry; returns the new snapshot and the spans replaced per entry."""
    counts = [0] * len(snapshot.entries)
    if not redactor.patterns:
        return snapshot, counts
    entries = []
    for entry in snapshot.entries:
        content, counts[entry.index] = redactor.content(entry.content)
        entries.append(MemoryEntry(entry.index, entry.type, content))
    new_entries = tuple(entries)
    return Snapshot(snapshot.path, snapshot.sha256, new_entries, split_samples(new_entries)), counts


def _running_sum(values: Sequence[int]) -> list[int]:
    return [0, *itertools.accumulate(values)]


def _memory_lines(lines: Sequence[str], view: MemoryView) -> list[str]:
    return list(itertools.chain.from_iterable(lines[start:stop] for start, stop in view.ranges))


def _render_teacher(system_prompt: str, lines: Sequence[str], observation: str, view: MemoryView) -> list[Message]:
    return teacher_messages(system_prompt, _memory_lines(lines, view), observation)


def fit_to_budget(
    view: MemoryView,
    render: Callable[[MemoryView], list[Message]],
    counter: PromptCounter,
    tokens_before: Sequence[int],
    limit: int,
    fixed: int,
) -> tuple[MemoryView, list[Message], int, int]:
    """Drop the fewest oldest entries of `view` so the rendered teacher prompt counts at most `limit` tokens.

    First cut from the per-line costs (`tokens_before` is their running sum; `fixed` the rest of the
    prompt), then measure the rendered prompt, since the chat template and merges across line ends
    shift the count by a few tokens: drop more while it is over, give entries back while it still fits.
    Returns (kept view, teacher messages, prompt tokens, entries dropped); the prompt is still over the
    limit only when even an empty memory is.
    """

    def measure(drop: int) -> tuple[MemoryView, list[Message], int]:
        kept = view.without_oldest(drop)
        messages = render(kept)
        return kept, messages, counter.messages(messages)

    dropped = entries_to_drop(view.ranges, tokens_before, limit - fixed)
    kept, teacher, tokens = measure(dropped)
    while tokens > limit and len(kept) > 0:
        allowed = view_cost(kept.ranges, tokens_before) - (tokens - limit)
        dropped += max(1, entries_to_drop(kept.ranges, tokens_before, allowed))
        kept, teacher, tokens = measure(dropped)
    while dropped > 0:
        # Skip the costly re-count when the entry to give back clearly cannot fit: in context a line costs
        # within a token or two of its cost alone, far less than GIVE_BACK_SLACK.
        newest_dropped = view.without_oldest(dropped - 1).ranges[0][0]
        line_cost = tokens_before[newest_dropped + 1] - tokens_before[newest_dropped]
        if limit - tokens < line_cost - GIVE_BACK_SLACK:
            break
        wider = measure(dropped - 1)
        if wider[2] > limit:
            break
        dropped -= 1
        kept, teacher, tokens = wider
    return kept, teacher, tokens, dropped


def iter_prompt_rows(
    snapshot: Snapshot,
    config: SnapshotsConfig,
    counter: PromptCounter | None,
    summary: SnapshotsSummary | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield one prompts.jsonl row per selected sample; holds the snapshot, never all the rows."""
    summary = summary if summary is not None else SnapshotsSummary()
    snapshot, redaction_counts = redact_snapshot(snapshot, Redactor.compile(config.redact_patterns))
    redactions_before = _running_sum(redaction_counts)
    patterns = compile_failure_patterns(config.failure_patterns)
    failed = [is_failure(s.feedback.content if s.feedback else None, patterns) for s in snapshot.samples]
    strategy = get_strategy(config.strategy)
    strategy_params = config.strategy_params()
    strategy.check(strategy_params)
    view_of = strategy.prepare(snapshot, strategy_params, failed)
    lines = [render_entry(entry) for entry in snapshot.entries]
    chars_before = _running_sum([len(line) + 1 for line in lines])
    limit = config.max_prompt_tokens
    tokens_before: list[int] = []
    empty_memory_tokens = 0
    if counter is not None and limit is not None:
        # Each line costs its tokens plus the newline that joins it to the next; counted once per snapshot.
        tokens_before = _running_sum(counter.texts([line + "\n" for line in lines]))
        empty_memory_tokens = counter.texts([EMPTY_MEMORY])[0]

    chosen = select_samples(len(snapshot.samples), config.max_samples, config.sample_selection, config.seed)
    summary.samples_in_snapshot = len(snapshot.samples)
    summary.redactions = sum(redaction_counts)
    for sample_idx in tqdm(chosen, desc="snapshots", unit="sample", disable=None):
        sample = snapshot.samples[sample_idx]
        view = view_of(sample)
        observation = render_content(sample.observation.content)
        dropped, prompt_tokens, over = 0, None, False
        if counter is not None and limit is not None:
            fixed = counter.messages(teacher_messages(config.system_prompt, [], observation)) - empty_memory_tokens
            render = functools.partial(_render_teacher, config.system_prompt, lines, observation)
            view, teacher, prompt_tokens, dropped = fit_to_budget(view, render, counter, tokens_before, limit, fixed)
            over = prompt_tokens > limit
            if over:
                log.warning("sample %d: %d tokens even without memory (max_prompt_tokens %d)", sample_idx, prompt_tokens, limit)
        else:
            teacher = _render_teacher(config.system_prompt, lines, observation, view)
        student = teacher if config.student_view == "teacher" else student_messages(config.system_prompt, observation)
        memory_redactions = sum(redactions_before[b] - redactions_before[a] for a, b in view.ranges)
        reference = [e for e in (sample.action, sample.feedback) if e is not None]
        redactions = {
            "memory": memory_redactions,
            "observation": redaction_counts[sample.observation.index],
            "reference": sum(redaction_counts[e.index] for e in reference),
        }
        metadata = {
            "strategy": config.strategy,
            "strategy_params": strategy.describe(strategy_params),
            "snapshot": snapshot.path.name,
            "snapshot_sha256": snapshot.sha256,
            "sample_entries": [sample.start, sample.stop - 1],
            "memory_entries": view.inclusive_ranges(),
            "memory_size_entries": len(view),
            # The memory block's length in the user prompt: the lines plus the newlines between them.
            "memory_size_chars": max(0, view_cost(view.ranges, chars_before) - 1),
            "max_prompt_tokens": limit,
            "token_counter": counter.name if counter is not None else None,
            "prompt_tokens": prompt_tokens,
            "dropped_for_budget": dropped,
            "over_budget": over,
            "reference_action": render_content(sample.action.content) if sample.action else None,
            "reference_feedback": render_content(sample.feedback.content) if sample.feedback else None,
            "failed": failed[sample_idx],
            "missing": sample.missing,
            "redactions": redactions,
        }
        summary.rows += 1
        summary.dropped_for_budget += dropped
        summary.over_budget += over
        yield {
            "sample_idx": sample_idx,
            "teacher_messages": [m.to_dict() for m in teacher],
            "student_messages": [m.to_dict() for m in student],
            "metadata": metadata,
        }


def run(config: SnapshotsConfig, output: Path, count_tokens: TokenCounter | None = None) -> SnapshotsSummary:
    """Read the snapshot, stream the rows into `output` atomically (nothing is left on error)."""
    fileio.ensure_parent(output)
    path = find_snapshot(config.checkpoint_dir, config.snapshot)
    fileio.refuse_input_as_output(output, path)
    if output.resolve().parent == path.resolve().parent and SNAPSHOT_PATTERN.match(output.name):
        raise UserError(f"{output}: this output would become the checkpoint's newest snapshot; write it outside {path.parent}")
    snapshot = load_snapshot(path)
    counter = make_counter(config, count_tokens)
    summary = SnapshotsSummary()
    with fileio.atomic_output(output) as handle:
        for row in iter_prompt_rows(snapshot, config, counter, summary):
            handle.write(fileio.dump_json_line(row))
    log.info(
        "wrote %d of %d samples from %s (%s) to %s; %d memory entries dropped for the token budget, %d redactions",
        summary.rows, summary.samples_in_snapshot, path, config.strategy, output, summary.dropped_for_budget, summary.redactions,
    )
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", required=True, type=Path, help="where to write prompts.jsonl")
    parser.add_argument("--params", type=Path, help="params.yaml to read the 'snapshots' section from")
    params.add_arguments(parser, SnapshotsConfig)


def main(args: argparse.Namespace) -> int:
    run(params.build(SnapshotsConfig, args.params, params.flag_values(args, SnapshotsConfig)), args.output)
    return 0
