"""Figures of one file, each by one lazy polars query (streaming, no Python loop over tokens): the cartridges
parquet (what training sees: tokens, kept entries and mass, unmapped ids, bytes per entry) and the JSONL (the
recorded top-K: the mass curve, what any other min_prob_mass would keep), or the JSONL's figures from what
convert counted while it parsed (data/dataset.figures.json), which spares stats a second pass over it."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from memdistill.convert.figures import DEFAULT_MASS_THRESHOLDS, read_figures
from memdistill.convert.mass import MISSING_ID
from memdistill.core import shards
from memdistill.core.errors import UserError
from memdistill.stats.scan import (
    ENTRY_COLUMN_PREFIX,
    ENTRY_COLUMNS,
    Files,
    collect,
    display_name,
    part_paths,
    polars_sources,
    scan_jsonl,
    scan_parquet,
    total_bytes,
)

log = logging.getLogger(__name__)

SAMPLE_COLUMNS = (
    "row", "sample", "tokens", "finish_reason", "failed", "memory_size_chars", "memory_size_entries", "memory_coverage",
    "observation", "observation_cut",
)


@dataclass(frozen=True, slots=True)
class ParquetFigures:
    samples: pl.DataFrame  # SAMPLE_COLUMNS + unmapped_chosen, one row per record
    top_k: int
    kept_entries: int
    unmapped_chosen: int
    unmapped_kept: int
    mean_mass_kept: float
    kept_histogram: pl.DataFrame  # kept, tokens
    file_bytes: int
    entry_bytes: int  # compressed bytes of the kept-entry columns

    @property
    def assistant_tokens(self) -> int:
        return int(self.samples["tokens"].sum())

    @property
    def unmapped(self) -> int:
        return self.unmapped_chosen + self.unmapped_kept


@dataclass(frozen=True, slots=True)
class JsonlFigures:
    samples: pl.DataFrame  # SAMPLE_COLUMNS, one row per record
    tokens_with_logprobs: int
    recorded_entries: int  # top-K entries recorded, before any sparsification
    top_k: int
    mass_curve: pl.DataFrame  # threshold, kept_entries, mean_kept_per_token, share_rows_below
    file_bytes: int


# ---------------------------------------------------------------------------------------------- queries


def _assistant_messages(frame: pl.LazyFrame) -> pl.LazyFrame:
    """One row per assistant message of the parquet, its record number in `row`."""
    return (
        frame.select("row", "messages")
        .explode("messages")
        .unnest("messages")
        .filter(pl.col("role") == "assistant")
    )


def _parquet_samples(frame: pl.LazyFrame) -> pl.LazyFrame:
    """One row per parquet record: SAMPLE_COLUMNS plus the -1 ids among its chosen assistant tokens."""
    per_record = (
        _assistant_messages(frame)
        .group_by("row")
        .agg(
            pl.col("token_ids").list.len().sum().alias("tokens"),
            pl.col("token_ids").list.count_matches(MISSING_ID).sum().cast(pl.Int64).alias("unmapped_chosen"),
        )
    )
    joined = frame.select("row", "metadata").join(per_record, on="row", how="left").sort("row")
    return pl.concat(
        [_sample_columns(joined), joined.select(pl.col("unmapped_chosen").fill_null(0))], how="horizontal"
    )


def _token_probs(item: pl.Expr) -> pl.Expr:
    """An assistant token's recorded top-K probabilities, sorted descending, from its logprobs item.

    Mirrors convert: non-finite logprobs are padding, rounding errors above 0 count as 0, and a token
    with no alternatives has its chosen token as the only entry.
    """
    top = item.struct.field("top_logprobs")
    alternatives = top.list.eval(pl.element().struct.field("logprob"))
    logprobs = pl.when(top.list.len().fill_null(0) > 0).then(alternatives).otherwise(pl.concat_list(item.struct.field("logprob")))
    finite = pl.element().filter(pl.element().is_finite())
    return logprobs.list.eval(finite.clip(upper_bound=0.0).exp()).list.sort(descending=True)


def jsonl_records(frame: pl.LazyFrame, thresholds: Sequence[float]) -> pl.LazyFrame:
    """One row per record, in a single pass over the file: the sample figures plus, per threshold, the
    entries convert would keep (shortest sorted prefix reaching it, else all) and the token rows whose
    whole top-K stays below it."""
    assistant = pl.col("role") == "assistant"
    content = pl.col("logprobs").struct.field("content")
    tokens = (
        frame.select("row", "metadata", "messages")
        .explode("messages")
        .unnest("messages")
        .select(
            "row",
            "metadata",
            pl.when(assistant).then(content).alias("item"),
            # Assistant tokens recorded without logprobs still count as tokens of the sample.
            pl.when(assistant & content.is_null()).then(pl.col("token_ids").list.len()).otherwise(0).alias("bare"),
        )
        .explode("item")
        .select("row", "metadata", "bare", pl.col("item").is_not_null().alias("token"), _token_probs(pl.col("item")).alias("probs"))
        .select(
            "row",
            "metadata",
            "bare",
            "token",
            pl.col("probs").list.len().alias("n"),
            pl.col("probs").list.sum().alias("mass"),
            pl.col("probs").list.eval(pl.element().cum_sum()).alias("cum"),
        )
    )
    per_threshold = []
    for index, threshold in enumerate(thresholds):
        below = pl.col("cum").list.eval(pl.element() < threshold).list.sum()
        per_threshold += [
            pl.min_horizontal(below + 1, pl.col("n")).filter(pl.col("token")).sum().alias(f"kept_{index}"),
            (pl.col("mass") < threshold).filter(pl.col("token")).sum().alias(f"below_{index}"),
        ]
    return tokens.group_by("row").agg(
        pl.col("metadata").first(),
        (pl.col("token").sum() + pl.col("bare").sum()).alias("tokens"),
        pl.col("token").sum().alias("tokens_with_logprobs"),
        pl.col("n").filter(pl.col("token")).sum().alias("recorded"),
        pl.col("n").filter(pl.col("token")).max().alias("k"),
        *per_threshold,
    )


def _curve_frame(totals: dict[str, Any], thresholds: Sequence[float]) -> pl.DataFrame:
    tokens = int(totals["tokens_with_logprobs"] or 0)
    kept = [int(totals[f"kept_{i}"] or 0) for i in range(len(thresholds))]
    below = [int(totals[f"below_{i}"] or 0) for i in range(len(thresholds))]
    return pl.DataFrame(
        {
            "threshold": [float(t) for t in thresholds],
            "kept_entries": kept,
            "mean_kept_per_token": [round(k / tokens, 4) if tokens else 0.0 for k in kept],
            "share_rows_below": [round(b / tokens, 6) if tokens else 0.0 for b in below],
        },
        schema={"threshold": pl.Float64, "kept_entries": pl.Int64, "mean_kept_per_token": pl.Float64, "share_rows_below": pl.Float64},
    )


def _sample_columns(frame: pl.DataFrame | pl.LazyFrame) -> Any:
    """SAMPLE_COLUMNS from per-record rows holding `row`, `tokens` and the `metadata` struct."""
    meta = pl.col("metadata").struct
    return frame.select(
        "row",
        meta.field("sample_idx").fill_null(pl.col("row").cast(pl.Int64)).alias("sample"),
        pl.col("tokens").fill_null(0).cast(pl.Int64),
        meta.field("finish_reason").fill_null("unknown").alias("finish_reason"),
        meta.field("failed").fill_null(False).alias("failed"),
        meta.field("memory_size_chars"),
        meta.field("memory_size_entries"),
        meta.field("memory_coverage"),
        meta.field("observation_idx").fill_null(meta.field("sample_idx")).fill_null(pl.col("row").cast(pl.Int64)).alias("observation"),
        (meta.field("observation_tokens_kept") < meta.field("observation_tokens")).fill_null(False).alias("observation_cut"),
    )


def jsonl_figures(path: Path, thresholds: Sequence[float] = DEFAULT_MASS_THRESHOLDS, exclude: Sequence[int] = ()) -> JsonlFigures:
    """What the intermediate JSONL holds: per-sample figures and the mass curve over `thresholds`, leaving
    out the records numbered in `exclude` (those convert rejected)."""
    thresholds = check_thresholds(thresholds, "thresholds")
    frame = scan_jsonl(path)
    if exclude:
        frame = frame.filter(~pl.col("row").is_in(pl.Series(list(exclude), dtype=pl.UInt32).implode()))
    records = collect(jsonl_records(frame, thresholds), path, "the intermediate JSONL").sort("row")
    totals = records.select(pl.exclude("row", "metadata", "k").sum(), pl.col("k").max()).row(0, named=True)
    return JsonlFigures(
        samples=_sample_columns(records),
        tokens_with_logprobs=int(totals["tokens_with_logprobs"] or 0),
        recorded_entries=int(totals["recorded"] or 0),
        top_k=int(totals["k"] or 0),
        mass_curve=_curve_frame(totals, thresholds),
        file_bytes=shards.total_bytes(path),
    )


def parquet_entry_bytes(path: Files) -> int:
    """Compressed bytes of the kept-entry columns (token_idx, token_id, logprobs), from the footer alone."""
    wanted = {f"{ENTRY_COLUMN_PREFIX}{name}.list.element" for name in ENTRY_COLUMNS}
    total = 0
    for part in part_paths(path):
        metadata = pq.ParquetFile(part).metadata
        for group in range(metadata.num_row_groups):
            row_group = metadata.row_group(group)
            for column in range(row_group.num_columns):
                chunk = row_group.column(column)
                if chunk.path_in_schema in wanted:
                    total += chunk.total_compressed_size
    return total


def parquet_figures(path: Files) -> ParquetFigures:
    """What the cartridges parquet holds: per-sample tokens, kept entries per token, kept mass, -1 ids."""
    frame = scan_parquet(path)
    assistant = (
        _assistant_messages(frame)
        .with_row_index("message")
        .select("message", "top_logprobs")
    )
    top = pl.col("top_logprobs").struct
    entries = (
        assistant.select(
            "message",
            top.field("token_idx").alias("token_idx"),
            top.field("token_id").alias("token_id"),
            top.field("logprobs").alias("logprobs"),
        )
        .explode("token_idx", "token_id", "logprobs")
        .drop_nulls("token_idx")
    )
    per_token = entries.group_by("message", "token_idx").agg(
        pl.len().alias("kept"), pl.col("logprobs").cast(pl.Float64).exp().sum().alias("mass")
    )
    histogram = per_token.group_by("kept").agg(pl.len().cast(pl.Int64).alias("tokens")).sort("kept")
    totals = per_token.select(
        pl.col("kept").sum().alias("kept"), pl.col("mass").mean().alias("mass"), pl.len().alias("tokens_with_entries")
    )
    unmapped = entries.select((pl.col("token_id") == MISSING_ID).sum().alias("unmapped"))
    top_k = assistant.select(top.field("shape").list.get(1, null_on_oob=True).max().alias("k"))
    samples, histogram, totals, unmapped, top_k = collect(
        [_parquet_samples(frame), histogram, totals, unmapped, top_k],
        path,
        "a cartridges parquet",
    )
    row = totals.row(0, named=True)
    return ParquetFigures(
        samples=samples,
        top_k=int(top_k.item() or 0),
        kept_entries=int(row["kept"] or 0),
        unmapped_chosen=int(samples["unmapped_chosen"].sum()),
        unmapped_kept=int(unmapped.item() or 0),
        mean_mass_kept=float(row["mass"] or 0.0),
        kept_histogram=_with_zero_bar(histogram, int(samples["tokens"].sum()), int(row["tokens_with_entries"] or 0)),
        file_bytes=total_bytes(path),
        entry_bytes=parquet_entry_bytes(path),
    )


def _with_zero_bar(histogram: pl.DataFrame, tokens: int, tokens_with_entries: int) -> pl.DataFrame:
    """Tokens without any kept entry only happen for rows with no finite logprob; show them as bar 0."""
    histogram = histogram.select(pl.col("kept").cast(pl.Int64), pl.col("tokens").cast(pl.Int64))
    without = tokens - tokens_with_entries
    if without > 0:
        histogram = pl.concat([pl.DataFrame({"kept": [0], "tokens": [without]}, schema=histogram.schema), histogram])
    return histogram


# ------------------------------------------------------------------------------ figures convert counted


def figures_from_convert(
    figures_file: Path | None, jsonl: Path, parquet: Files, thresholds: Sequence[float]
) -> tuple[JsonlFigures, ParquetFigures] | None:
    """Both halves of the figures from convert's side output (convert_figures.py) and the parquet's
    metadata column and footer, without parsing the JSONL or the parquet's entries. None, with the
    reason logged, when the side output is absent, lacks a threshold, or belongs to other files: the
    caller then reads the files themselves."""
    if figures_file is None or not figures_file.is_file():
        log.info("no convert figures%s; computing them from %s", f" at {figures_file}" if figures_file else "", jsonl)
        return None
    polars_sources(jsonl)
    polars_sources(parquet)
    figures = read_figures(figures_file)
    missing = sorted(set(thresholds) - set(figures.thresholds))
    if missing:
        reason = f"counted at {figures.thresholds}, not at {missing} (re-run convert with these stats.mass_thresholds)"
    elif (figures.input_bytes, figures.parquet_bytes) != (shards.total_bytes(jsonl), total_bytes(parquet)):
        reason = f"written for other files than {jsonl} and {display_name(parquet)}"
    else:
        reason = None
    samples = None if reason else collect(scan_parquet(parquet).select("row", "metadata"), parquet, "a cartridges parquet")
    if samples is not None and samples.height != figures.rows:
        reason, samples = f"counts {figures.rows} records but {display_name(parquet)} has {samples.height}", None
    if reason or samples is None:
        log.warning("%s: %s; computing the figures from %s instead", figures_file, reason, jsonl)
        return None
    index = [figures.thresholds.index(t) for t in thresholds]
    totals = {"tokens_with_logprobs": figures.tokens_with_logprobs}
    for i, j in enumerate(index):
        totals[f"kept_{i}"], totals[f"below_{i}"] = figures.kept_at[j], figures.rows_below[j]
    from_jsonl = JsonlFigures(
        samples=pl.DataFrame({"tokens": figures.recorded_tokens_per_row}, schema={"tokens": pl.Int64}),
        tokens_with_logprobs=figures.tokens_with_logprobs,
        recorded_entries=figures.recorded_entries,
        top_k=figures.recorded_top_k,
        mass_curve=_curve_frame(totals, thresholds),
        file_bytes=shards.total_bytes(jsonl),
    )
    histogram = pl.DataFrame(
        {"kept": [int(k) for k in figures.kept_histogram], "tokens": list(figures.kept_histogram.values())},
        schema={"kept": pl.Int64, "tokens": pl.Int64},
    ).sort("kept")
    from_parquet = ParquetFigures(
        samples=_sample_columns(samples.with_columns(pl.Series("tokens", figures.tokens_per_row, dtype=pl.Int64))),
        top_k=figures.top_k,
        kept_entries=figures.kept_entries,
        unmapped_chosen=figures.unmapped_chosen,
        unmapped_kept=figures.unmapped_kept,
        mean_mass_kept=figures.mass_kept_sum / figures.tokens_with_entries if figures.tokens_with_entries else 0.0,
        kept_histogram=_with_zero_bar(histogram, sum(figures.tokens_per_row), figures.tokens_with_entries),
        file_bytes=total_bytes(parquet),
        entry_bytes=parquet_entry_bytes(parquet),
    )
    return from_jsonl, from_parquet


def check_thresholds(values: Sequence[float], name: str) -> tuple[float, ...]:
    out = tuple(sorted({float(v) for v in values}))
    if not out or not all(0.0 < v <= 1.0 for v in out):
        raise UserError(f"{name}: every mass threshold must be in (0, 1], got {list(values)}")
    return out
