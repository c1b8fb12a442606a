"""snapshots stage: checkpoint folder -> prompts.jsonl (teacher and student prompts per sample).

Finds the snapshot (`snapshot: latest` = highest numeric id), splits it into samples, redacts, applies
the memory-formation strategy, fits the memory to `max_prompt_tokens` by dropping whole samples in the
order the strategy values least, and streams one JSON line per selected sample with what its memory
covered. Same inputs and params give a byte-identical file.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from tqdm import tqdm

from memdistill import fileio, params
from memdistill.budget import AUTO, as_ranges, fit_to_budget, resolve_max_prompt_tokens
from memdistill.errors import UserError
from memdistill.feedback import DEFAULT_FAILURE_PATTERNS, compile_failure_patterns, is_failure
from memdistill.prompts import (
    EMPTY_MEMORY,
    FunctionCounter,
    Message,
    PromptCounter,
    TokenCounter,
    TokenizerCounter,
    estimate_tokens,
    render_content,
    render_entry,
    resolve_system_prompt,
    student_messages,
    teacher_messages,
    view_cost,
)
from memdistill.redact import DEFAULT_REDACT_PATTERNS, Redactor
from memdistill.snapshot import SNAPSHOT_PATTERN, MemoryEntry, Sample, Snapshot, find_snapshot, load_observations, load_snapshot, split_samples
from memdistill.strategies import MemoryView, StrategyParams, get_strategy, strategy_names

log = logging.getLogger(__name__)

STUDENT_VIEWS = ("observation_only", "teacher")
SELECTIONS = ("first", "last", "random")
# A sample whose prompt kept less than this share of the memory its strategy wanted is counted in the WARNING.
LOW_COVERAGE = 0.5
# Keys every row's metadata gets from the stage; `metadata:` from params may not overwrite them.
RESERVED_METADATA = frozenset({
    "strategy", "strategy_params", "snapshot", "snapshot_sha256", "system_prompt", "system_prompt_source", "observation_source",
    "observation_idx", "view", "views", "sample_entries", "memory_entries", "memory_size_entries", "memory_size_chars",
    "memory_samples_wanted", "memory_samples_kept", "memory_tokens_wanted", "memory_tokens_kept", "memory_coverage",
    "max_prompt_tokens", "token_counter", "prompt_tokens", "dropped_for_budget", "reference_action",
    "reference_feedback", "failed", "missing", "redactions", "sample_idx", "metrics", "teacher", "finish_reason",
})
# generate.max_tokens when no params file says otherwise (kept free for the answer by max_prompt_tokens: auto).
DEFAULT_ANSWER_TOKENS = 48


class SnapshotsConfig(params.StageParams):
    section: ClassVar[str] = "snapshots"
    # `max_prompt_tokens: auto` keeps the answer's tokens free: generate.max_tokens.
    borrowed: ClassVar[dict[str, str]] = {"max_tokens": "generate"}

    checkpoint_dir: str = Field("data/checkpoints/ep_000200", description="episode checkpoint folder holding memory_<id>.jsonl snapshots")
    snapshot: str = Field("latest", description="'latest' (highest numeric id) or a file name in checkpoint_dir such as memory_000100.jsonl")
    strategy: str = Field("exclude_current", description="memory formation: " + ", ".join(strategy_names()))
    window_k: int = Field(12, ge=1, description="rolling_window: entries before the current observation the teacher sees (whole samples only)")
    max_memory_samples: int = Field(8, ge=0, description="failure_focus: past samples the teacher sees (failed first)")
    failure_patterns: list[str] | None = Field(
        default_factory=lambda: list(DEFAULT_FAILURE_PATTERNS), description="regexes (case-insensitive) marking text feedback as a failure"
    )
    max_prompt_tokens: Annotated[int, Field(ge=1)] | Literal["auto"] | None = Field(
        AUTO,
        description="longest teacher prompt: 'auto' (the teacher's context minus generate.max_tokens), a number, or null (no limit); "
        "whole memory samples are dropped to fit, the ones the strategy values least first",
    )
    context_length: int | None = Field(
        None, ge=1, description="the teacher's context window for 'auto' (null = read from the tokenizer / known teachers)"
    )
    max_tokens: int = Field(DEFAULT_ANSWER_TOKENS, ge=1, description="the answer's tokens that max_prompt_tokens: auto keeps free (read from generate.max_tokens)")
    tokenizer: str | None = Field("smollm2-135m-instruct", description="tokenizer counting prompt tokens (null = 4 characters per token)")
    system_prompt: str | None = Field(None, description="the agent's system prompt (null = the checkpoint's system_prompt.txt, else a generic agent prompt)")
    system_prompt_file: str | None = Field(None, description="a text file holding the agent's system prompt (instead of system_prompt)")
    student_view: Literal[STUDENT_VIEWS] = Field("observation_only", description="training messages: observation_only (no memory) or teacher")
    max_samples: int | None = Field(None, ge=1, description="keep at most this many samples (null = all)")
    sample_selection: Literal[SELECTIONS] = Field("first", description="which samples max_samples keeps")
    seed: int = Field(0, description="seed for sample_selection: random and for random_sampling")
    redact_patterns: list[str] | None = Field(
        default_factory=lambda: list(DEFAULT_REDACT_PATTERNS), description="regexes whose matches become [REDACTED] (null = none)"
    )
    subset_size: int = Field(4, ge=1, description="random_sampling: whole samples per memory view")
    num_subsets: int = Field(3, ge=1, description="random_sampling: memory views (rows) per observation")
    shuffle: bool = Field(False, description="random_sampling: show a view's samples in drawn order instead of the original order")
    observations: str | None = Field(
        None,
        description="JSONL of observations from outside the memory ({\"content\": ...} per line, or memory-format entries whose "
        "Observations are taken); samples are built from them against the whole memory, so exclude_current then "
        "equals full_memory, and there is no reference action or feedback (null = the memory's own)",
    )
    metadata: dict[str, Any] = Field(default_factory=dict, description="copied into every row's metadata (run, split, agent version), e.g. '{run: exp-12, split: train}'")

    _local_paths = field_validator("checkpoint_dir", "system_prompt_file", "observations")(params.local_path_field)

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

    @field_validator("metadata")
    @classmethod
    def _no_reserved_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        clashes = sorted(set(map(str, value)) & RESERVED_METADATA)
        if clashes:
            raise ValueError(f"key(s) {', '.join(clashes)} are written by memdistill itself; rename them")
        return value

    @model_validator(mode="after")
    def _one_system_prompt(self) -> "SnapshotsConfig":
        if self.system_prompt is not None and self.system_prompt_file is not None:
            raise ValueError("system_prompt and system_prompt_file are both set; give one of them")
        return self

    def strategy_params(self) -> StrategyParams:
        return StrategyParams(
            self.window_k, self.max_memory_samples, tuple(self.failure_patterns or ()),
            self.subset_size, self.num_subsets, self.shuffle, self.seed,
        )


@dataclass
class SnapshotsSummary:
    """What a run did, for the log line (and tests)."""

    samples_in_snapshot: int = 0
    rows: int = 0
    max_prompt_tokens: int | None = None
    dropped_for_budget: int = 0
    """Memory samples (whole units) dropped to fit the budget, over all rows."""
    over_budget: list[int] = field(default_factory=list)
    """Samples left out because their prompt is over the budget even with an empty memory."""
    low_coverage: int = 0
    """Rows that kept less than LOW_COVERAGE of the memory their strategy wanted."""
    coverages: list[float] = field(default_factory=list)
    redactions: int = 0
    """Spans replaced in the whole snapshot (each row's metadata counts those in its own prompt)."""

    @property
    def mean_coverage(self) -> float:
        return sum(self.coverages) / len(self.coverages) if self.coverages else 1.0


def make_counter(config: SnapshotsConfig, count_tokens: TokenCounter | None = None) -> PromptCounter:
    """The token counter for the budget and coverage: injected, the named tokenizer, or the estimate."""
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


def prompt_budget(config: SnapshotsConfig, counter: PromptCounter, answer_tokens: int) -> int | None:
    """`max_prompt_tokens` as a number; 'auto' is the teacher's context length minus the answer's tokens."""
    if config.max_prompt_tokens != AUTO:
        return resolve_max_prompt_tokens(config.max_prompt_tokens, None, answer_tokens)
    context = config.context_length
    if context is None and config.tokenizer:
        from memdistill.models import teacher_context_length

        context = teacher_context_length(config.tokenizer, getattr(counter, "tokenizer", None))
    return resolve_max_prompt_tokens(AUTO, context, answer_tokens)


def _targets(snapshot: Snapshot, config: SnapshotsConfig, redactor: Redactor) -> list[tuple[Sample, str, int]]:
    """The observations to build samples from: (sample, where it came from, redactions in its observation)."""
    if config.observations is None:
        return [(sample, "memory", -1) for sample in snapshot.samples]
    targets = []
    for external in load_observations(config.observations, len(snapshot.entries)):
        sample = external.sample
        content, count = redactor.content(sample.observation.content)
        observation = MemoryEntry(sample.observation.index, sample.observation.type, content)
        targets.append((replace(sample, observation=observation), f"observations:{config.observations}:{external.line}", count))
    return targets


def iter_prompt_rows(
    snapshot: Snapshot,
    config: SnapshotsConfig,
    counter: PromptCounter,
    summary: SnapshotsSummary | None = None,
    limit: int | None = None,
    system_prompt: tuple[str, str] | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield one prompts.jsonl row per selected sample and memory view; holds the snapshot, never all the rows.

    `limit` is the resolved token budget (None = none); `system_prompt` is (text, where it came from),
    resolved from the config when not given.
    """
    summary = summary if summary is not None else SnapshotsSummary()
    agent_prompt, prompt_source = system_prompt or resolve_system_prompt(
        config.system_prompt, config.system_prompt_file, config.checkpoint_dir
    )
    redactor = Redactor.compile(config.redact_patterns)
    snapshot, redaction_counts = redact_snapshot(snapshot, redactor)
    redactions_before = _running_sum(redaction_counts)
    targets = _targets(snapshot, config, redactor)
    patterns = compile_failure_patterns(config.failure_patterns)
    failed = [is_failure(s.feedback.content if s.feedback else None, patterns) for s in snapshot.samples]
    strategy = get_strategy(config.strategy)
    strategy_params = config.strategy_params()
    strategy.check(strategy_params)
    plans_of = strategy.prepare(snapshot, strategy_params, failed)
    lines = [render_entry(entry) for entry in snapshot.entries]
    chars_before = _running_sum([len(line) + 1 for line in lines])
    # Each line costs its tokens plus the newline that joins it to the next; counted once per snapshot.
    tokens_before = _running_sum(counter.texts([line + "\n" for line in lines]))
    empty_memory_tokens = counter.texts([EMPTY_MEMORY])[0]

    chosen = select_samples(len(targets), config.max_samples, config.sample_selection, config.seed)
    summary.samples_in_snapshot = len(targets)
    summary.redactions = sum(redaction_counts) + sum(max(0, count) for _, _, count in targets)
    summary.max_prompt_tokens = limit
    for sample_idx in tqdm(chosen, desc="snapshots", unit="sample", disable=None):
        sample, source, observation_redactions = targets[sample_idx]
        from_memory = source == "memory"
        observation = render_content(sample.observation.content)
        fixed = counter.messages(teacher_messages(agent_prompt, [], observation)) - empty_memory_tokens
        render = functools.partial(_render_teacher, agent_prompt, lines, observation)
        plans = plans_of(sample)
        for view_idx, plan in enumerate(plans):
            fitted = fit_to_budget(plan, render, counter, tokens_before, limit, fixed)
            if limit is not None and fitted.tokens > limit:
                # Sending it would make the teacher truncate or refuse it; leave it out and say so at the end.
                summary.over_budget.append(sample_idx)
                break
            view, teacher, coverage = fitted.view, fitted.messages, fitted.coverage
            student = teacher if config.student_view == "teacher" else student_messages(agent_prompt, observation)
            memory_redactions = sum(redactions_before[b] - redactions_before[a] for a, b in view.ranges)
            reference = [e for e in (sample.action, sample.feedback) if e is not None]
            redactions = {
                "memory": memory_redactions,
                "observation": redaction_counts[sample.observation.index] if from_memory else observation_redactions,
                "reference": sum(redaction_counts[e.index] for e in reference),
            }
            metadata = {
                **config.metadata,
                "strategy": config.strategy,
                "strategy_params": strategy.describe(strategy_params),
                "snapshot": snapshot.path.name,
                "snapshot_sha256": snapshot.sha256,
                "system_prompt": agent_prompt,
                "system_prompt_source": prompt_source,
                # "memory" (the sample is one of the memory's own) or "observations:PATH:LINE".
                "observation_source": source,
                # The observation this row answers; sample_idx numbers rows (observation * views + view), so
                # it stays unique when random_sampling gives one observation several views.
                "observation_idx": sample_idx,
                "view": view_idx,
                "views": len(plans),
                "sample_entries": [sample.start, sample.stop - 1] if from_memory else None,
                "memory_entries": view.inclusive_ranges(),
                "memory_size_entries": len(view),
                # The memory block's length in the user prompt: the lines plus the newlines between them.
                "memory_size_chars": max(0, view_cost(view.ranges, chars_before) - 1),
                # What the strategy wanted and what the budget kept: sample numbers as inclusive [first, last]
                # runs (-1 for the entries before the first Observation) and the memory lines' tokens.
                "memory_samples_wanted": as_ranges(coverage.samples_wanted),
                "memory_samples_kept": as_ranges(coverage.samples_kept),
                "memory_tokens_wanted": coverage.tokens_wanted,
                "memory_tokens_kept": coverage.tokens_kept,
                "memory_coverage": coverage.coverage,
                "max_prompt_tokens": limit,
                "token_counter": counter.name,
                "prompt_tokens": fitted.tokens,
                "dropped_for_budget": fitted.dropped_units,
                "reference_action": render_content(sample.action.content) if sample.action else None,
                "reference_feedback": render_content(sample.feedback.content) if sample.feedback else None,
                "failed": failed[sample_idx] if from_memory else None,
                "missing": sample.missing,
                "redactions": redactions,
            }
            summary.rows += 1
            summary.dropped_for_budget += fitted.dropped_units
            summary.coverages.append(coverage.coverage)
            summary.low_coverage += coverage.coverage < LOW_COVERAGE
            yield {
                "sample_idx": sample_idx * len(plans) + view_idx,
                "teacher_messages": [m.to_dict() for m in teacher],
                "student_messages": [m.to_dict() for m in student],
                "metadata": metadata,
            }


def coverage_warning(summary: SnapshotsSummary, strategy: str) -> str | None:
    """The one WARNING line for samples that lost more than half of their memory, or None."""
    if not summary.low_coverage:
        return None
    return (
        f"{summary.low_coverage} of {summary.rows} samples kept less than half of the memory {strategy} wanted "
        f"(mean coverage {summary.mean_coverage:.2f}) under max_prompt_tokens {summary.max_prompt_tokens}: "
        f"raise max_prompt_tokens or set it to auto (the teacher's context minus generate.max_tokens), use a teacher "
        f"with a longer context, or choose a smaller memory (rolling_window, failure_focus with fewer max_memory_samples)"
    )


def run(
    config: SnapshotsConfig,
    output: Path,
    count_tokens: TokenCounter | None = None,
    answer_tokens: int | None = None,
) -> SnapshotsSummary:
    """Read the snapshot, stream the rows into `output` atomically (nothing is left on error).

    `answer_tokens` (default: the config's generate.max_tokens) is what `max_prompt_tokens: auto` keeps free.
    """
    answer_tokens = config.max_tokens if answer_tokens is None else answer_tokens
    system_prompt = resolve_system_prompt(config.system_prompt, config.system_prompt_file, config.checkpoint_dir)
    fileio.ensure_parent(output)
    path = find_snapshot(config.checkpoint_dir, config.snapshot)
    fileio.refuse_input_as_output(output, path)
    if output.resolve().parent == path.resolve().parent and SNAPSHOT_PATTERN.match(output.name):
        raise UserError(f"{output}: this output would become the checkpoint's newest snapshot; write it outside {path.parent}")
    snapshot = load_snapshot(path)
    counter = make_counter(config, count_tokens)
    limit = prompt_budget(config, counter, answer_tokens)
    summary = SnapshotsSummary()
    with fileio.atomic_output(output) as handle:
        for row in iter_prompt_rows(snapshot, config, counter, summary, limit, system_prompt):
            handle.write(fileio.dump_json_line(row))
        if summary.over_budget and not summary.rows:
            raise UserError(
                f"{path}: every selected prompt is over max_prompt_tokens {limit} even with an empty memory; "
                f"raise max_prompt_tokens or shorten system_prompt"
            )
    log.info(
        "wrote %d of %d samples from %s (%s, system prompt from %s) to %s; max_prompt_tokens %s, mean memory coverage %.3f, "
        "%d memory samples dropped for the token budget, %d redactions",
        summary.rows, summary.samples_in_snapshot, path, config.strategy, system_prompt[1], output, limit,
        summary.mean_coverage, summary.dropped_for_budget, summary.redactions,
    )
    if summary.over_budget:
        shown = ", ".join(map(str, summary.over_budget[:10])) + (" ..." if len(summary.over_budget) > 10 else "")
        log.warning(
            "%d samples left out: over max_prompt_tokens %s even with an empty memory (sample_idx %s); "
            "raise max_prompt_tokens or shorten system_prompt", len(summary.over_budget), limit, shown,
        )
    warning = coverage_warning(summary, config.strategy)
    if warning:
        log.warning(warning)
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", required=True, type=fileio.local_path, help="where to write prompts.jsonl")
    parser.add_argument("--params", type=fileio.local_path, help="params.yaml to read the 'snapshots' section (and generate.max_tokens) from")
    params.add_arguments(parser, SnapshotsConfig, skip=("system_prompt", "system_prompt_file"))
    prompt = parser.add_mutually_exclusive_group()
    for name in ("system_prompt", "system_prompt_file"):
        params.add_argument(prompt, SnapshotsConfig, name)


def main(args: argparse.Namespace) -> int:
    flags = params.flag_values(args, SnapshotsConfig)
    # A system prompt flag beats whichever of the two the params file set.
    for given, other in (("system_prompt", "system_prompt_file"), ("system_prompt_file", "system_prompt")):
        if given in flags:
            flags[other] = None
            break  # the two flags are mutually exclusive
    run(params.build(SnapshotsConfig, args.params, flags), args.output)
    return 0
