"""Dataset statistics with polars: figures for DVC metrics and data for DVC plots."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl


@dataclass(frozen=True, slots=True)
class StatsResult:
    metrics: dict[str, Any]
    plots: dict[str, pl.DataFrame]


def assistant_messages(parquet: Path) -> pl.LazyFrame:
    """One row per assistant message: sample row, token count, kept entries per row as a list."""
    return (
        pl.scan_parquet(parquet)
        .with_row_index("row")
        .select("row", "messages")
        .explode("messages")
        .unnest("messages")
        .filter(pl.col("role") == "assistant")
        .select(
            "row",
            pl.col("token_ids").list.len().alias("tokens"),
            pl.col("token_ids").list.count_matches(-1).alias("unmapped_chosen"),
            pl.col("top_logprobs").struct.field("token_idx").alias("token_idx"),
            pl.col("top_logprobs").struct.field("token_id").list.count_matches(-1).alias("unmapped_kept"),
            pl.col("top_logprobs").struct.field("logprobs").alias("kept_logprobs"),
            pl.col("top_logprobs").struct.field("shape").list.get(1, null_on_oob=True).alias("k"),
        )
    )


def compute_stats(jsonl: Path, parquet: Path) -> StatsResult:
    messages = assistant_messages(parquet).collect()
    per_token = (
        messages.select("row", "token_idx", "kept_logprobs")
        .explode("token_idx", "kept_logprobs")
        .drop_nulls("token_idx")
        .group_by("row", "token_idx")
        .agg(pl.len().alias("kept"), pl.col("kept_logprobs").exp().sum().alias("mass"))
    )
    tokens = messages["tokens"]
    meta = pl.scan_parquet(parquet).select("metadata").collect()["metadata"].str.json_decode(infer_schema_length=None)
    finish = meta.struct.field("finish_reason") if "finish_reason" in meta.struct.fields else pl.Series([], dtype=pl.String)
    failed = meta.struct.field("failed") if "failed" in meta.struct.fields else pl.Series([], dtype=pl.Boolean)
    total_tokens = int(tokens.sum() or 0)
    kept_total = int(per_token["kept"].sum() or 0)
    parquet_bytes = parquet.stat().st_size
    metrics: dict[str, Any] = {
        "samples": messages["row"].n_unique(),
        "failed_reference_samples": int(failed.fill_null(False).sum()) if len(failed) else 0,
        "assistant_tokens": {
            "total": total_tokens,
            "mean": _round(tokens.mean()),
            "p50": _round(tokens.quantile(0.5, "nearest")),
            "p95": _round(tokens.quantile(0.95, "nearest")),
        },
        "top_k": int(messages["k"].max() or 0),
        "kept_entries": kept_total,
        "mean_kept_per_token": _round(kept_total / total_tokens if total_tokens else 0.0),
        "mean_mass_kept": _round(per_token["mass"].mean()),
        "unmapped_tokens": int(messages["unmapped_chosen"].sum() + messages["unmapped_kept"].sum()),
        "finish_reasons": {str(k): int(v) for k, v in finish.value_counts().iter_rows()} if len(finish) else {},
        "jsonl_bytes": jsonl.stat().st_size,
        "parquet_bytes": parquet_bytes,
        "parquet_bytes_per_token": _round(parquet_bytes / total_tokens if total_tokens else 0.0),
    }
    metrics["unmapped_rate"] = _round(metrics["unmapped_tokens"] / (total_tokens + kept_total) if total_tokens else 0.0, 6)
    plots = {
        "kept_per_token": per_token.group_by("kept").agg(pl.len().alias("tokens")).sort("kept"),
        "tokens_per_sample": messages.select(pl.col("row").alias("sample"), "tokens").sort("sample"),
    }
    return StatsResult(metrics, plots)


def _round(value: Any, digits: int = 4) -> float:
    return round(float(value), digits) if value is not None else 0.0
