"""Prompt rows: one prompts.jsonl row per selected sample and memory view of a snapshot.

The snapshot is redacted, the memory-formation strategy plans each sample's memory, the token budget keeps
whole memory samples in the order the strategy values them (skipping one that cannot fit and trying the next),
and every row records what its memory covered.
The snapshots stage reads its parameters and writes the rows; this builds them.
"""

from __future__ import annotations

import functools
import itertools
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from tqdm import tqdm

from memdistill.snapshots.advice import budget_advice, smaller_memory_advice
from memdistill.snapshots.budget import AUTO, as_ranges, cut_from_middle, fit_to_budget, resolve_max_prompt_tokens
from memdistill.snapshots.checkpoint import MemoryEntry, Sample, Snapshot, load_observations, split_samples
from memdistill.snapshots.feedback import FeedbackReader
from memdistill.snapshots.prompts import (
    EMPTY_MEMORY,
    FunctionCounter,
    Message,
    PromptCounter,
    TokenCounter,
    TokenizerCounter,
    estimate_tokens,
    render_content,
    render_entry,
    student_messages,
    teacher_messages,
    view_cost,
)
from memdistill.snapshots.redact import Redactor
from memdistill.snapshots.strategies import MemoryView, StrategyParams, get_strategy

STUDENT_VIEWS = ("observation_only", "teacher")
SELECTIONS = ("first", "last", "random")
# A sample whose prompt kept less than this share of the memory its strategy wanted is counted in the WARNING
# (stats reports the same share: memdistill/stats/figures.py LOW_COVERAGE).
LOW_COVERAGE = 0.5
# Keys every row's metadata gets from here; the user's `metadata` may not overwrite them.
RESERVED_METADATA = frozenset({
    "strategy", "strategy_params", "checkpoint", "snapshot", "snapshot_sha256", "system_prompt", "system_prompt_source", "observation_source",
    "observation_idx", "view", "views", "sample_entries", "memory_entries", "memory_size_entries", "memory_size_chars",
    "memory_samples_wanted", "memory_samples_kept", "memory_tokens_wanted", "memory_tokens_kept", "memory_coverage",
    "max_prompt_tokens", "token_counter", "prompt_tokens", "dropped_for_budget", "observation_tokens", "observation_tokens_kept",
    "reference_action", "reference_feedback", "failed", "feedback", "missing", "redactions", "sample_idx", "metrics", "teacher",
    "finish_reason",
})


@dataclass(frozen=True, slots=True)
class RowOptions:
    """What building the rows takes from the snapshots parameters."""

    strategy: str
    strategy_params: StrategyParams
    redact_patterns: list[str] | None = None
    feedback: FeedbackReader = field(default_factory=FeedbackReader.from_params)
    """How each sample's feedback is read (failure_focus ranks by it; every row records its verdict and rule)."""
    observations: str | None = None
    """A JSONL of observations from outside the memory (None: the memory's own)."""
    student_view: str = "observation_only"
    max_samples: int | None = None
    sample_selection: str = "first"
    seed: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)
    max_observation_tokens: int | None = None
    """Cut an observation longer than this many tokens from its middle (None: never cut)."""


@dataclass
class SnapshotsSummary:
    """What a run did, for the log line (and tests)."""

    samples_in_snapshot: int = 0
    samples_written: int = 0
    """Samples with at least one row (random_sampling writes several rows per sample)."""
    rows: int = 0
    max_prompt_tokens: int | None = None
    dropped_for_budget: int = 0
    """Memory samples (whole units) dropped to fit the budget, over all rows."""
    over_budget: list[int] = field(default_factory=list)
    """Samples left out because their prompt is over the budget even with an empty memory."""
    over_budget_observation_tokens: list[int] = field(default_factory=list)
    """Their observations' tokens (after any cut), in the same order."""
    base_tokens: int = 0
    """The teacher prompt with an empty memory and an empty observation: what the budget leaves an observation."""
    observations_cut: int = 0
    """Samples whose observation was cut to max_observation_tokens."""
    low_coverage: int = 0
    """Rows that kept less than LOW_COVERAGE of the memory their strategy wanted."""
    coverages: list[float] = field(default_factory=list)
    redactions: int = 0
    """Spans replaced in the whole snapshot (each row's metadata counts those in its own prompt)."""

    @property
    def mean_coverage(self) -> float:
        return sum(self.coverages) / len(self.coverages) if self.coverages else 1.0


def make_counter(tokenizer: str | None, count_tokens: TokenCounter | None = None) -> PromptCounter:
    """The token counter for the budget and coverage: injected, the named tokenizer, or the estimate (None)."""
    if count_tokens is not None:
        return FunctionCounter(count_tokens, name=getattr(count_tokens, "__name__", "custom"))
    if not tokenizer:
        return FunctionCounter(estimate_tokens, name="estimate")
    from memdistill.core.models import load_tokenizer

    return TokenizerCounter(load_tokenizer(tokenizer), name=tokenizer)


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


def prompt_budget(
    max_prompt_tokens: int | str | None, context_length: int | None, tokenizer: str | None, counter: PromptCounter, answer_tokens: int
) -> int | None:
    """`max_prompt_tokens` as a number; 'auto' is the teacher's context length (given, else read from the
    tokenizer) minus the answer's tokens."""
    if max_prompt_tokens != AUTO:
        return resolve_max_prompt_tokens(max_prompt_tokens, None, answer_tokens)
    if context_length is None and tokenizer:
        from memdistill.core.models import teacher_context_length

        context_length = teacher_context_length(tokenizer, getattr(counter, "tokenizer", None))
    return resolve_max_prompt_tokens(AUTO, context_length, answer_tokens)


def _targets(snapshot: Snapshot, observations: str | None, redactor: Redactor) -> list[tuple[Sample, str, int]]:
    """The observations to build samples from: (sample, where it came from, redactions in its observation)."""
    if observations is None:
        return [(sample, "memory", -1) for sample in snapshot.samples]
    targets = []
    for external in load_observations(observations, len(snapshot.entries)):
        sample = external.sample
        content, count = redactor.content(sample.observation.content)
        observation = MemoryEntry(sample.observation.index, sample.observation.type, content)
        targets.append((replace(sample, observation=observation), f"observations:{observations}:{external.line}", count))
    return targets


def iter_prompt_rows(
    snapshot: Snapshot,
    options: RowOptions,
    counter: PromptCounter,
    system_prompt: tuple[str, str],
    summary: SnapshotsSummary | None = None,
    limit: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield one prompts.jsonl row per selected sample and memory view; holds the snapshot, never all the rows.

    `system_prompt` is (text, where it came from); `limit` is the resolved token budget (None = none).
    """
    summary = summary if summary is not None else SnapshotsSummary()
    agent_prompt, prompt_source = system_prompt
    redactor = Redactor.compile(options.redact_patterns)
    snapshot, redaction_counts = redact_snapshot(snapshot, redactor)
    redactions_before = _running_sum(redaction_counts)
    targets = _targets(snapshot, options.observations, redactor)
    verdicts = [options.feedback.read(s.feedback.content if s.feedback else None) for s in snapshot.samples]
    failed = [verdict.failed is True for verdict in verdicts]
    strategy = get_strategy(options.strategy)
    strategy.check(options.strategy_params)
    plans_of = strategy.prepare(snapshot, options.strategy_params, failed)
    lines = [render_entry(entry) for entry in snapshot.entries]
    chars_before = _running_sum([len(line) + 1 for line in lines])
    # Each line costs its tokens plus the newline that joins it to the next; counted once per snapshot.
    tokens_before = _running_sum(counter.texts([line + "\n" for line in lines]))
    empty_memory_tokens = counter.texts([EMPTY_MEMORY])[0]

    chosen = select_samples(len(targets), options.max_samples, options.sample_selection, options.seed)
    summary.samples_in_snapshot = len(targets)
    summary.redactions = sum(redaction_counts) + sum(max(0, count) for _, _, count in targets)
    summary.max_prompt_tokens = limit
    summary.base_tokens = counter.messages(teacher_messages(agent_prompt, [], ""))
    max_observation = options.max_observation_tokens
    for sample_idx in tqdm(chosen, desc="snapshots", unit="sample", disable=None):
        sample, source, observation_redactions = targets[sample_idx]
        from_memory = source == "memory"
        observation = render_content(sample.observation.content)
        if max_observation is None:
            observation_tokens = observation_tokens_kept = counter.texts([observation])[0]
        else:
            cut = cut_from_middle(observation, max_observation, lambda text: counter.texts([text])[0])
            observation, observation_tokens, observation_tokens_kept = cut.text, cut.tokens, cut.kept_tokens
            summary.observations_cut += cut.kept_tokens < cut.tokens
        fixed = counter.messages(teacher_messages(agent_prompt, [], observation)) - empty_memory_tokens
        render = functools.partial(_render_teacher, agent_prompt, lines, observation)
        plans = plans_of(sample)
        written = False
        for view_idx, plan in enumerate(plans):
            fitted = fit_to_budget(plan, render, counter, tokens_before, limit, fixed)
            if limit is not None and fitted.tokens > limit:
                # Even an empty memory is over: the teacher would truncate or refuse it. Leave it out and say
                # at the end whether the observation or the system prompt is what is too long.
                summary.over_budget.append(sample_idx)
                summary.over_budget_observation_tokens.append(counter.texts([observation])[0])
                break
            summary.samples_written += not written
            written = True
            view, teacher, coverage = fitted.view, fitted.messages, fitted.coverage
            student = teacher if options.student_view == "teacher" else student_messages(agent_prompt, observation)
            memory_redactions = sum(redactions_before[b] - redactions_before[a] for a, b in view.ranges)
            reference = [e for e in (sample.action, sample.feedback) if e is not None]
            redactions = {
                "memory": memory_redactions,
                "observation": redaction_counts[sample.observation.index] if from_memory else observation_redactions,
                "reference": sum(redaction_counts[e.index] for e in reference),
            }
            metadata = {
                **options.metadata,
                "strategy": options.strategy,
                "strategy_params": strategy.describe(options.strategy_params),
                "checkpoint": str(snapshot.path.parent),  # the folder as the user named it, for the summary
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
                # The observation's tokens, and those of it still in the prompts (fewer when max_observation_tokens cut it).
                "observation_tokens": observation_tokens,
                "observation_tokens_kept": observation_tokens_kept,
                "reference_action": render_content(sample.action.content) if sample.action else None,
                "reference_feedback": render_content(sample.feedback.content) if sample.feedback else None,
                "failed": failed[sample_idx] if from_memory else None,
                # The reader's verdict (null = the feedback says neither, or there is none) and the rule that decided.
                "feedback": verdicts[sample_idx].to_dict() if from_memory else None,
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


def coverage_warning(summary: SnapshotsSummary, options: RowOptions, max_prompt_tokens: int | str | None) -> str | None:
    """The one WARNING line for samples that lost more than half of their memory, or None; its advice fits the
    strategy and the max_prompt_tokens setting (`auto`, a number or null) the run used."""
    if not summary.low_coverage:
        return None
    described = get_strategy(options.strategy).describe(options.strategy_params)
    return (
        f"{summary.low_coverage} of {summary.rows} samples kept less than half of the memory {options.strategy} wanted "
        f"(mean coverage {summary.mean_coverage:.2f}) under max_prompt_tokens {summary.max_prompt_tokens}: "
        f"{budget_advice(max_prompt_tokens)}, or {smaller_memory_advice(options.strategy, described)}"
    )


def over_budget_message(summary: SnapshotsSummary, max_observation_tokens: int | None, max_prompt_tokens: int | str | None) -> str | None:
    """What left samples out because even an empty memory is over the budget, and what to change for the
    settings the run used (`max_prompt_tokens` as set: auto, a number or null); or None.

    With an empty memory a prompt is the system prompt and template (`base_tokens`) plus the observation, so
    when the first fits the budget it is the observation that is too long.
    """
    if not summary.over_budget:
        return None
    count, limit, base = len(summary.over_budget), summary.max_prompt_tokens, summary.base_tokens
    shown = ", ".join(map(str, summary.over_budget[:10])) + (" ..." if count > 10 else "")
    which = f"{count} samples left out" if summary.rows else f"all {count} selected samples left out"
    if limit is None or base > limit:
        return (
            f"{which} (sample_idx {shown}): the system prompt, the prompt's headers and the chat template alone are {base} tokens, "
            f"over max_prompt_tokens {limit} even with an empty memory; shorten system_prompt, or {budget_advice(max_prompt_tokens)}"
        )
    sizes = sorted(summary.over_budget_observation_tokens)
    size = f"{sizes[0]}" if sizes[0] == sizes[-1] else f"{sizes[0]}-{sizes[-1]}"
    cut = f"lower snapshots.max_observation_tokens ({max_observation_tokens})" if max_observation_tokens else "set snapshots.max_observation_tokens"
    return (
        f"{which} (sample_idx {shown}): their observation alone is too long ({size} tokens) for max_prompt_tokens {limit}, "
        f"which leaves an observation {limit - base} tokens once the system prompt, the prompt's headers and the chat "
        f"template are counted, even with an empty memory; {cut} below {limit - base} to cut long observations from the "
        f"middle, or {budget_advice(max_prompt_tokens)}"
    )
