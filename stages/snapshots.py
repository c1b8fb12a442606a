"""snapshots stage: checkpoint folder -> prompts.jsonl (teacher and student prompts per sample).

Finds the snapshot (`snapshot: latest` = highest numeric id), splits it into samples, redacts, applies
the memory-formation strategy, fits the memory to `max_prompt_tokens` by keeping the whole samples the
strategy values most that fit (one too large is skipped, the next tried), and streams one JSON line per
selected sample with what its memory covered (the rows are built by memdistill/snapshots/rows.py). Same inputs and params give a byte-identical file.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from memdistill.core import fileio, params
from memdistill.core.errors import UserError
from memdistill.snapshots.budget import AUTO
from memdistill.snapshots.checkpoint import SNAPSHOT_PATTERN, find_snapshot, load_snapshot
from memdistill.snapshots.feedback import (
    DEFAULT_FAILURE_PATTERNS,
    DEFAULT_FEEDBACK_KEYS,
    DEFAULT_SUCCESS_PATTERNS,
    FeedbackReader,
    compile_feedback_keys,
    compile_patterns,
)
from memdistill.snapshots.prompts import TokenCounter, resolve_system_prompt
from memdistill.snapshots.redact import DEFAULT_REDACT_PATTERNS, Redactor
from memdistill.snapshots.rows import (
    RESERVED_METADATA,
    SELECTIONS,
    STUDENT_VIEWS,
    RowOptions,
    SnapshotsSummary,
    coverage_warning,
    iter_prompt_rows,
    make_counter,
    over_budget_message,
    prompt_budget,
)
from memdistill.snapshots.strategies import StrategyParams, get_strategy, strategy_names

log = logging.getLogger(__name__)

# generate.max_tokens when no params file says otherwise (kept free for the answer by max_prompt_tokens: auto).
DEFAULT_ANSWER_TOKENS = 48
# "No file" for the parameters that name one (observations, system_prompt_file), as params.yaml spells it: dvc.yaml
# makes the file they name a dependency of this stage, and a DVC dependency must be a path that exists (null
# breaks dvc.yaml), so a file kept in git for this (its text says so) stands for none. null means the same outside DVC.
NO_FILE = "data/none"


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
        default_factory=lambda: list(DEFAULT_FAILURE_PATTERNS),
        description="regexes (case-insensitive) marking text feedback as failed unless negated ('no errors'); null = none",
    )
    success_patterns: list[str] | None = Field(
        default_factory=lambda: list(DEFAULT_SUCCESS_PATTERNS),
        description="regexes (case-insensitive) marking text feedback as passed, or failed when negated ('did not pass'); null = none",
    )
    feedback_keys: dict[str, list[str]] = Field(
        default_factory=lambda: {role: list(keys) for role, keys in DEFAULT_FEEDBACK_KEYS.items()},
        description="dict feedback keys per role (verdict, status, failed, passed, total, exit_code, score); a role given "
        "replaces its default keys, [] turns it off",
    )
    max_prompt_tokens: Annotated[int, Field(ge=1)] | Literal["auto"] | None = Field(
        AUTO,
        description="longest teacher prompt: 'auto' (the teacher's context minus generate.max_tokens), a number, or null (no limit); "
        "the whole memory samples the strategy values most that fit are kept (one too large is skipped, the next tried)",
    )
    max_observation_tokens: int | None = Field(
        None, ge=16, description="cut an observation longer than this many tokens from its middle, with a marker (null = never cut)",
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

    @field_validator("system_prompt_file", "observations", mode="before")
    @classmethod
    def _no_file(cls, value: Any) -> Any:
        return None if isinstance(value, str) and Path(value) == Path(NO_FILE) else value

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        params.check_with(get_strategy, value)
        return value

    @field_validator("failure_patterns", "success_patterns")
    @classmethod
    def _feedback_regexes(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        params.check_with(lambda patterns: compile_patterns(str(info.field_name), patterns), value)
        return value

    @field_validator("feedback_keys")
    @classmethod
    def _feedback_roles(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        params.check_with(compile_feedback_keys, value)
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

    def feedback_reader(self) -> FeedbackReader:
        return FeedbackReader.from_params(self.failure_patterns, self.success_patterns, self.feedback_keys)

    def row_options(self) -> RowOptions:
        return RowOptions(
            self.strategy, self.strategy_params(), self.redact_patterns, self.feedback_reader(), self.observations,
            self.student_view, self.max_samples, self.sample_selection, self.seed, self.metadata, self.max_observation_tokens,
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
    counter = make_counter(config.tokenizer, count_tokens)
    limit = prompt_budget(config.max_prompt_tokens, config.context_length, config.tokenizer, counter, answer_tokens)
    summary = SnapshotsSummary()
    with fileio.atomic_output(output) as handle:
        for row in iter_prompt_rows(snapshot, config.row_options(), counter, system_prompt, summary, limit):
            handle.write(fileio.dump_json_line(row))
        if summary.over_budget and not summary.rows:
            raise UserError(f"{path}: {over_budget_message(summary, config.max_observation_tokens, config.max_prompt_tokens)}")
    log.info(
        "wrote %d rows for %d of %d samples from %s (%s, system prompt from %s) to %s; max_prompt_tokens %s, mean memory "
        "coverage %.3f, %d memory samples dropped for the token budget, %d observations cut to max_observation_tokens, "
        "%d redactions",
        summary.rows, summary.samples_written, summary.samples_in_snapshot, path, config.strategy, system_prompt[1], output,
        limit, summary.mean_coverage, summary.dropped_for_budget, summary.observations_cut, summary.redactions,
    )
    left_out = over_budget_message(summary, config.max_observation_tokens, config.max_prompt_tokens)
    if left_out:
        log.warning(left_out)
    warning = coverage_warning(summary, config.row_options(), config.max_prompt_tokens)
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
