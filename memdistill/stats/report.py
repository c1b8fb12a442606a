"""What the stats stage tells a person: the few figures compared across experiments, the run they describe,
and the warnings, each with advice that fits the settings the run used.

`memdistill.stats.figures` computes every figure (the report, `reports/stats_detail.json`); `headline_metrics` picks
the short flat set that `metrics/stats.json` keeps, so `dvc exp show --only-changed` stays readable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from memdistill.snapshots.advice import smaller_memory_advice

# Above these shares the summary and the log warn (and the detail lists the warning).
MOST = 0.5

# OpenAI's own servers return at most 20 alternatives per token.
OPENAI_MAX_TOP_LOGPROBS = 20


GAIN_HEADLINE = ("mean", "p10", "p50", "p90", "share_below_0.1")


def headline_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """metrics/stats.json: the figures a person compares across experiments, one flat key each.

    Everything else (percentiles, per-reason counts, byte sizes, the run context, the warnings) stays in
    the report. The memory gain is one block of its five figures (`memory_gain.mean` in `dvc exp show`).
    """
    memory = metrics["memory"]
    headline = {
        "samples": metrics["samples"],
        "failed_reference_samples": metrics["failed_reference_samples"],
        "assistant_tokens": metrics["assistant_tokens"]["total"],
        "tokens_per_sample": metrics["assistant_tokens"]["mean"],
        "share_hit_max_tokens": metrics["share_hit_max_tokens"],
        "coverage_mean": memory["coverage"]["mean"],
        "kept_per_token": metrics["mean_kept_per_token"],
        "mass_kept": metrics["mean_mass_kept"],
        "share_below_min_mass": metrics["share_rows_below_min_mass"],
        "parquet_mb": round(metrics["parquet_bytes"] / 1e6, 4),
        "rejected_samples": metrics["rejected_samples"],
        "unmapped_rate": metrics["unmapped_rate"],
    }
    if "memory_gain" in metrics:  # the gain stage's block, its figures only (null when not measured; counts in the report)
        gain = metrics["memory_gain"]
        headline["memory_gain"] = {key: gain.get(key) for key in GAIN_HEADLINE}
    return headline


@dataclass(frozen=True, slots=True)
class RunContext:
    """What the dataset was made from, as its rows' metadata records it: each field lists the distinct
    values found (one for a dataset made in one run; empty when the rows do not record it)."""

    strategy: tuple[str, ...] = ()
    strategy_params: tuple[dict[str, Any], ...] = ()
    checkpoint: tuple[str, ...] = ()
    snapshot: tuple[str, ...] = ()
    teacher: tuple[dict[str, Any], ...] = ()
    max_prompt_tokens: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": list(self.strategy), "strategy_params": list(self.strategy_params), "checkpoint": list(self.checkpoint),
            "snapshot": list(self.snapshot), "teacher": list(self.teacher), "max_prompt_tokens": list(self.max_prompt_tokens),
        }  # fmt: skip


def _one(values: Sequence[Any]) -> Any:
    """The value when the dataset has exactly one, else None (unknown, or several runs mixed)."""
    return values[0] if len(values) == 1 else None


def _listed(values: Sequence[str]) -> str:
    return ", ".join(values) if values else "not recorded"


def _teacher_text(teacher: Mapping[str, Any]) -> str:
    details = [str(teacher[key]) for key in ("backend", "flavor") if teacher.get(key)]
    if teacher.get("max_tokens") is not None:
        details.append(f"max_tokens {teacher['max_tokens']}")
    if teacher.get("top_logprobs") is not None:
        details.append(f"top_logprobs {teacher['top_logprobs']}")
    if teacher.get("logprobs"):
        details.append(f"{teacher['logprobs']} logprobs")
    return f"{teacher.get('model') or 'unknown model'} ({', '.join(details)})" if details else str(teacher.get("model"))


def context_rows(context: RunContext) -> list[tuple[str, str]]:
    """(label, value) rows naming the run: strategy and its parameters, checkpoint, snapshot, teacher."""
    strategies = list(context.strategy)
    given = _one(context.strategy_params)
    if len(strategies) == 1 and given:
        strategies = [f"{strategies[0]} ({', '.join(f'{key} {value}' for key, value in given.items())})"]
    return [
        ("strategy", _listed(strategies)),
        ("checkpoint", _listed(list(context.checkpoint))),
        ("snapshot", _listed(list(context.snapshot))),
        ("teacher", _listed([_teacher_text(t) for t in context.teacher])),
    ]


# metrics/generate.json's figures as the summary words them; any other figure is shown under its own key.
GENERATION_LABELS = {
    "samples": "samples answered",
    "requests_sent": "requests sent (this run)",
    "answers_from_cache": "answers from the cache (this run)",
    "retries": "retries (this run)",
    "failures": "failed samples (this run)",
    "input_tokens": "prompt tokens of the answers",
    "output_tokens": "tokens generated for the answers",
    "generation_seconds_total": "teacher seconds the answers took when first produced",
    "wall_seconds": "wall seconds (this run)",
    "tokens_per_second": "new tokens per second (this run)",
}


def generation_rows(generation: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """metrics/generate.json as (label, value) rows of the summary."""
    return [(f"generation: {GENERATION_LABELS.get(key, key)}", value)
            for key, value in generation.items() if isinstance(value, (int, float, str))]


@dataclass(frozen=True, slots=True)
class ReportWarning:
    code: str  # stable, for the report's `warnings` list
    message: str


def report_warnings(metrics: Mapping[str, Any], context: RunContext) -> list[ReportWarning]:
    """What a person must not miss in this dataset, each with what to change; none when all is well."""
    found = []
    samples = metrics["samples"]
    teacher = _one(context.teacher) or {}
    hit = metrics["finish_reasons"].get("length", 0)
    if samples and hit / samples > MOST:
        limit = f" ({teacher['max_tokens']})" if teacher.get("max_tokens") is not None else ""
        found.append(ReportWarning("most_answers_hit_max_tokens", (
            f"{hit} of {samples} answers ({hit / samples:.0%}) stopped at max_tokens{limit}: they end mid-answer, and "
            f"the student learns to stop there too; raise generate.max_tokens"
        )))  # fmt: skip
    below = metrics["share_rows_below_min_mass"]
    if below > MOST:
        k = metrics["top_k"]
        more = "lower convert.min_prob_mass (the table of other values shows what each keeps)"
        capped = teacher.get("backend") == "openai" and teacher.get("flavor") == "openai" and k >= OPENAI_MAX_TOP_LOGPROBS
        if not capped:
            more += f", or record more alternatives (generate.top_logprobs, now {k})"
        found.append(ReportWarning("most_rows_below_min_mass", (
            f"{below:.0%} of token rows never reach min_prob_mass {metrics['min_prob_mass']} within the {k} alternatives "
            f"recorded: those rows keep all {k} and the mass cut saves nothing there; {more}"
        )))  # fmt: skip
    memory = metrics["memory"]
    if memory["share_below_half"]:
        strategy = _one(context.strategy)
        params = _one(context.strategy_params) or {}
        limit = _one(context.max_prompt_tokens)
        room = f"allow longer prompts (max_prompt_tokens was {limit})" if limit is not None else "allow longer prompts (max_prompt_tokens)"
        found.append(ReportWarning("memory_coverage_below_half", (
            f"{memory['share_below_half']:.0%} of samples kept less than half of the memory {strategy or 'their strategy'} "
            f"wanted under the token budget (mean coverage {memory['coverage']['mean']}): "
            f"{smaller_memory_advice(strategy, params)}, or {room}"
        )))  # fmt: skip
    cut = metrics.get("observations_cut") or 0
    if cut:
        found.append(ReportWarning("observations_cut", (
            f"{cut} of {samples} samples' own observation was over the token budget and was cut from its middle "
            f"(snapshots.max_observation_tokens): the teacher answered a shortened observation"
        )))  # fmt: skip
    return found
