"""Dataset statistics with polars: figures for DVC metrics, data for DVC plots, a readable summary.

Everything is a lazy polars query over the files (explicit schemas, list expressions, streaming
collection), so a multi-gigabyte JSONL or parquet is never held whole and no Python loop runs over
tokens. Two sources, each for what only it knows:

- the parquet (what training sees): tokens, kept entries, kept mass, unmapped ids, bytes per entry;
- the JSONL (the full recorded top-K): the mass curve, i.e. what any other `min_prob_mass` would keep.
"""

from __future__ import annotations

import collections
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from memdistill.convert.figures import DEFAULT_MASS_THRESHOLDS
from memdistill.convert.split import validation_path
from memdistill.core import fileio
from memdistill.core.errors import UserError
from memdistill.gain.report import GainReport, empty_report, gain_report
from memdistill.stats.file_figures import (
    SAMPLE_COLUMNS,
    JsonlFigures,
    ParquetFigures,
    check_thresholds,
    figures_from_convert,
    jsonl_figures,
    parquet_figures,
)
from memdistill.stats.report import RunContext, headline_metrics, report_warnings
from memdistill.stats.scan import (
    CONTEXT_TYPE,
    Files,
    collect,
    part_paths,
    scan_jsonl,
    scan_parquet,
)

log = logging.getLogger(__name__)

# A sample that kept less than this share of the memory its strategy wanted counts as poorly covered.
LOW_COVERAGE = 0.5


@dataclass(frozen=True, slots=True)
class StatsResult:
    metrics: dict[str, Any]
    plots: dict[str, pl.DataFrame]
    samples: pl.DataFrame  # per record: sample, tokens, finish_reason, memory sizes
    # metrics/generate.json, shown in the summary; not repeated in metrics/stats.json (`dvc metrics show` lists both)
    generation: dict[str, Any] = field(default_factory=dict)
    context: RunContext = field(default_factory=RunContext)
    memory_gain: GainReport | None = None  # from the gain stage's file (memdistill/gain/report.py)

    @property
    def headline(self) -> dict[str, Any]:
        """metrics/stats.json: the figures compared across experiments (`metrics` is the whole report)."""
        return headline_metrics(self.metrics)


def run_context(parquet: Path) -> RunContext:
    """The strategy, checkpoint, snapshot and teacher the parquet's rows record (distinct values of each)."""
    rows = collect(
        scan_parquet(parquet, CONTEXT_TYPE).select(pl.col("metadata").struct.unnest()).unique(), parquet, "a cartridges parquet"
    )

    def distinct(column: str) -> list[Any]:
        values = rows[column].drop_nulls().unique(maintain_order=False).to_list()
        return sorted(values, key=lambda value: json.dumps(value, sort_keys=True))

    def without_nulls(value: dict[str, Any]) -> dict[str, Any]:
        return {key: item for key, item in value.items() if item is not None}

    snapshots = rows.select("snapshot", "snapshot_sha256").drop_nulls("snapshot").unique().sort("snapshot", "snapshot_sha256")
    return RunContext(
        strategy=tuple(distinct("strategy")),
        strategy_params=tuple(without_nulls(p) for p in distinct("strategy_params")),
        checkpoint=tuple(distinct("checkpoint")),
        snapshot=tuple(f"{name} (sha256 {sha[:12]})" if sha else name for name, sha in snapshots.iter_rows()),
        teacher=tuple(without_nulls(t) for t in distinct("teacher") if any(v is not None for v in t.values())),
        max_prompt_tokens=tuple(distinct("max_prompt_tokens")),
    )


# ------------------------------------------------------------------------------------------------- math


def project_parquet_bytes(kept_entries: Sequence[int], parquet_bytes: int, entry_bytes: int, actual_kept: int) -> list[int]:
    """Projected parquet size for other kept-entry counts: fixed part + measured bytes per kept entry.

    The fixed part (texts, token ids, metadata, footer) does not depend on `min_prob_mass`; the entry
    columns are assumed to compress to the same bytes per entry at any threshold.
    """
    fixed = max(parquet_bytes - entry_bytes, 0)
    per_entry = entry_bytes / actual_kept if actual_kept else 0.0
    return [int(round(fixed + per_entry * kept)) for kept in kept_entries]


def anchor_curve(curve: pl.DataFrame, min_prob_mass: float, parquet_kept: int, parquet_tokens: int) -> pl.DataFrame:
    """Shift the JSONL's mass curve by the entries convert adds that the JSONL does not record (an
    end-of-turn row appended at logprob 0 keeps one entry at any threshold), so that at
    `min_prob_mass` the curve equals the parquet and its other points are comparable to it."""
    at_min_mass = curve.filter(pl.col("threshold") == min_prob_mass)["kept_entries"]
    offset = parquet_kept - int(at_min_mass[0]) if len(at_min_mass) else 0
    if offset:
        log.debug("mass curve: %+d entries the parquet holds beyond the JSONL's top-K", offset)
    kept = pl.col("kept_entries") + offset
    mean = (kept / parquet_tokens).round(4) if parquet_tokens else pl.lit(0.0)
    return curve.with_columns(kept.alias("kept_entries"), mean.alias("mean_kept_per_token"))


def _check_threshold_matches(jsonl: JsonlFigures, parquet: ParquetFigures, min_prob_mass: float, path: Path) -> None:
    """Warn when the parquet was not made at `min_prob_mass` (convert does not record it in the file).

    The only entries the parquet may hold beyond the JSONL's rule are appended end-of-turn rows: one
    token and one entry each.
    """
    at_min_mass = jsonl.mass_curve.filter(pl.col("threshold") == min_prob_mass)["kept_entries"]
    expected = int(at_min_mass[0]) + parquet.assistant_tokens - int(jsonl.samples["tokens"].sum())
    if parquet.kept_entries != expected:
        log.warning(
            "%s holds %d kept entries but min_prob_mass %s would keep %d: was convert run with another "
            "min_prob_mass? Pass the one it used (--min-prob-mass, or --params params.yaml)",
            path, parquet.kept_entries, min_prob_mass, expected,
        )


def _round(value: Any, digits: int = 4) -> float:
    return round(float(value), digits) if value is not None else 0.0


def _ratio(numerator: float, denominator: float, digits: int = 4) -> float:
    return round(numerator / denominator, digits) if denominator else 0.0


def read_generate_metrics(path: Path | None) -> dict[str, Any]:
    """metrics/generate.json, carried into stats; an absent file means 'no generation figures'."""
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object of generation metrics")
    return data


# ------------------------------------------------------------------------------------------------ stats


def memory_coverage_figures(coverage: pl.Series) -> dict[str, Any]:
    """memory.coverage (kept / wanted memory tokens): mean, p10 and the share of samples below LOW_COVERAGE.

    Nulls (records written before coverage was recorded) are left out; all null gives nulls.
    """
    known = coverage.drop_nulls()
    if known.is_empty():
        return {"coverage": {"mean": None, "p10": None}, "share_below_half": None, "samples_measured": 0}
    return {
        "coverage": {"mean": _round(known.mean()), "p10": _round(known.quantile(0.1, "linear"))},
        "share_below_half": _ratio(int((known < LOW_COVERAGE).sum()), known.len()),
        "samples_measured": known.len(),
    }


def split_figures(tokens: pl.Series, train: Path, validation: Path) -> dict[str, Any]:
    """Samples and assistant tokens per split; `tokens` per record, the train file's first."""
    rows = sum(pq.ParquetFile(part).metadata.num_rows for part in part_paths(train))
    return {
        "train": {"samples": rows, "assistant_tokens": int(tokens[:rows].sum())},
        "validation": {"samples": tokens.len() - rows, "assistant_tokens": int(tokens[rows:].sum())},
    }


def read_rejects(parquet: Path) -> list[dict[str, Any]]:
    """The samples convert left out of `parquet` (its `<parquet>.rejects.jsonl`; none when absent)."""
    from memdistill.convert.conversion import rejects_path

    path = rejects_path(parquet)
    if not path.is_file():
        return []
    return [record for _, record in fileio.read_jsonl(path)]


def check_one_logprobs_mode(jsonl: Path) -> None:
    """Refuse a dataset whose records mix raw and tempered logprobs (metadata.teacher.logprobs)."""
    modes = collect(
        scan_jsonl(jsonl).select(pl.col("metadata").struct.field("teacher").struct.field("logprobs").alias("mode")).drop_nulls().unique(),
        jsonl, "the intermediate JSONL",
    )["mode"].sort().to_list()
    if len(modes) > 1:
        raise UserError(f"{jsonl}: records mix logprob contracts ({', '.join(modes)} in metadata.teacher.logprobs); generate it again with one generate.logprobs")


def compute_stats(
    jsonl: Path,
    parquet: Path,
    min_prob_mass: float,
    generate_metrics: Path | None = None,
    thresholds: Sequence[float] = DEFAULT_MASS_THRESHOLDS,
    figures: Path | None = None,
    validation: Path | None = None,
    gain: Path | None = None,
) -> StatsResult:
    """The metrics, plot tables and per-sample figures; from convert's `figures` side output when it is
    there and current, else by reading the JSONL and the parquet themselves (same figures either way).
    With `validation`, the figures are over both splits (train rows first) and `splits` counts each."""
    (min_prob_mass,) = check_thresholds([min_prob_mass], "min_prob_mass")
    thresholds = check_thresholds([*thresholds, min_prob_mass], "mass_thresholds")
    rejects = read_rejects(parquet)
    if validation is None and validation_path(parquet).exists():
        validation = validation_path(parquet)  # the split convert writes beside the parquet by default
    files: Files = (parquet, validation) if validation is not None else parquet
    counted = figures_from_convert(figures, jsonl, files, thresholds)
    if counted is None:
        # convert refused a file mixing logprob contracts; reading the JSONL itself, stats checks it too.
        check_one_logprobs_mode(jsonl)
        skipped = [r["record"] for r in rejects if type(r.get("record")) is int]
        counted = jsonl_figures(jsonl, thresholds, skipped), parquet_figures(files)
    from_jsonl, from_parquet = counted
    if from_jsonl.samples.height != from_parquet.samples.height:
        raise UserError(
            f"{parquet}: {from_parquet.samples.height} records but {jsonl} has {from_jsonl.samples.height}; "
            f"the parquet is stale, re-run convert"
        )
    samples = from_parquet.samples
    tokens = samples["tokens"]
    total_tokens = int(tokens.sum())
    _check_threshold_matches(from_jsonl, from_parquet, min_prob_mass, parquet)
    curve = anchor_curve(from_jsonl.mass_curve, min_prob_mass, from_parquet.kept_entries, total_tokens)
    curve = curve.with_columns(
        pl.Series(
            "projected_parquet_bytes",
            project_parquet_bytes(curve["kept_entries"].to_list(), from_parquet.file_bytes, from_parquet.entry_bytes, from_parquet.kept_entries),
            dtype=pl.Int64,
        )
    ).with_columns((pl.col("projected_parquet_bytes") / 1e6).round(4).alias("projected_parquet_mb"))
    at_min_mass = curve.filter(pl.col("threshold") == min_prob_mass).row(0, named=True)
    finish = samples.group_by("finish_reason").agg(pl.len()).sort("finish_reason")
    unmapped = from_parquet.unmapped
    hit_max_tokens = int((samples["finish_reason"] == "length").sum())
    metrics: dict[str, Any] = {
        "samples": samples.height,
        # Per observation: random_sampling answers one observation in several rows, with the same feedback.
        "failed_reference_samples": samples.filter("failed")["observation"].n_unique(),
        "observations_cut": samples.filter("observation_cut")["observation"].n_unique(),
        "memory": memory_coverage_figures(samples["memory_coverage"]),
        "assistant_tokens": {
            "total": total_tokens,
            "mean": _round(tokens.mean()),
            "p50": _round(tokens.quantile(0.5, "linear")),
            "p95": _round(tokens.quantile(0.95, "linear")),
        },
        "top_k": from_parquet.top_k,
        "min_prob_mass": min_prob_mass,
        "recorded_entries": from_jsonl.recorded_entries,
        "kept_entries": from_parquet.kept_entries,
        "mean_kept_per_token": _ratio(from_parquet.kept_entries, total_tokens),
        "mean_mass_kept": _round(from_parquet.mean_mass_kept),
        "share_rows_below_min_mass": _round(at_min_mass["share_rows_below"], 6),
        "rejected_samples": len(rejects),
        "rejected_by_reason": dict(sorted(collections.Counter(str(r.get("kind")) for r in rejects).items())),
        "unmapped_tokens": unmapped,
        "unmapped_rate": _ratio(unmapped, total_tokens + from_parquet.kept_entries, 6),
        "finish_reasons": {str(reason): int(count) for reason, count in finish.iter_rows()},
        "share_hit_max_tokens": _ratio(hit_max_tokens, samples.height),
        "jsonl_bytes": from_jsonl.file_bytes,
        "parquet_bytes": from_parquet.file_bytes,
        "parquet_bytes_per_token": _ratio(from_parquet.file_bytes, total_tokens),
    }
    if validation is not None:
        metrics["splits"] = split_figures(tokens, parquet, validation)
    plots = {
        "kept_per_token": from_parquet.kept_histogram,
        "mass_curve": curve,
        "tokens_per_sample": samples.select("sample", "tokens"),
        "memory_vs_output": samples.select("sample", "memory_size_chars", "memory_size_entries", "tokens"),
        "memory_coverage": samples.select("sample", pl.col("memory_coverage").alias("coverage")),
    }
    context = run_context(parquet)
    metrics["run"] = context.to_dict()
    # The memory gain: its own block (memdistill/gain/report.py), over every sample the gain stage scored.
    report = gain_report(gain, jsonl) if gain is not None else empty_report()
    metrics["memory_gain"] = report.metrics
    plots["memory_gain"] = report.histogram
    metrics["warnings"] = [{"code": w.code, "message": w.message} for w in report_warnings(metrics, context)]
    return StatsResult(metrics, plots, samples.select(*SAMPLE_COLUMNS[1:]), read_generate_metrics(generate_metrics), context, report)
