"""The memory gain in the stats stage's outputs: metrics/stats.json's `memory_gain`, the histogram plot's
table, and the summary's section (the samples the memory matters most and least for)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from memdistill.gain import math as gain_math
from memdistill.gain.gain_file import read_summary, read_table

# Below this a sample's answer barely depends on the memory (nats/token); stats reports the share under it.
LOW_GAIN = 0.1
HISTOGRAM_BINS = 20
EXTREMES = 5
PLOT_SCHEMA = {"gain": pl.Float64, "samples": pl.Int64}


@dataclass(frozen=True, slots=True)
class GainReport:
    metrics: dict[str, Any]
    histogram: pl.DataFrame  # gain (bin start, nats/token), samples
    highest: list[dict[str, Any]]  # key, gain, top1_agreement, observation (its first line)
    lowest: list[dict[str, Any]]


def _figure(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), 4)


def gain_metrics(gains: np.ndarray, statuses: Sequence[str], summary: dict[str, Any]) -> dict[str, Any]:
    """mean, p10, p50, p90 and the share below LOW_GAIN over the measured samples, and how many were not."""
    known = gains[~np.isnan(gains)]
    counts = {status: int(sum(1 for s in statuses if s == status)) for status in ("measured", "empty", "rejected", "not_measured")}
    quantile = (lambda q: _figure(np.quantile(known, q))) if known.size else (lambda q: None)
    return {
        "mean": _figure(known.mean()) if known.size else None,
        "p10": quantile(0.1), "p50": quantile(0.5), "p90": quantile(0.9),
        f"share_below_{LOW_GAIN}": _figure(gain_math.share_below(known, LOW_GAIN)),
        **{f"samples_{status}": count for status, count in counts.items()},
        "engine": (summary.get("engine") or {}).get("engine"),
        "not_measured": summary.get("not_measured"),
    }  # fmt: skip


def gain_histogram(gains: np.ndarray, bins: int = HISTOGRAM_BINS) -> pl.DataFrame:
    """Samples per gain bin (bins of equal width from the lowest to the highest finite gain)."""
    known = gains[np.isfinite(gains)]
    if not known.size:
        return pl.DataFrame(schema=PLOT_SCHEMA)
    low, high = float(known.min()), float(known.max())
    counts, edges = np.histogram(known, bins=bins, range=(low, high if high > low else low + 1.0))
    return pl.DataFrame({"gain": np.round(edges[:-1], 3), "samples": counts.astype(np.int64)}, schema=PLOT_SCHEMA)


def first_line(text: str, limit: int = 80) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def observations(jsonl: Path) -> dict[int, str]:
    """sample_idx -> the first line of its observation (the last user message the student sees)."""
    from memdistill.gain.inputs import dataset_records

    out: dict[int, str] = {}
    for _, record in dataset_records(jsonl):
        metadata = record.get("metadata") if isinstance(record, dict) else None
        key = metadata.get("sample_idx") if isinstance(metadata, dict) else None
        users = [m.get("content") or "" for m in record.get("messages") or [] if isinstance(m, dict) and m.get("role") == "user"]
        if type(key) is int and users:
            out[key] = first_line(users[-1])
    return out


def gain_report(gain: Path, jsonl: Path | None) -> GainReport:
    table = read_table(gain, ["key", "status", "gain", "top1_agreement"])
    gains = np.array([np.nan if g is None else g for g in table.column("gain").to_pylist()], dtype=np.float64)
    statuses = table.column("status").to_pylist()
    metrics = gain_metrics(gains, statuses, read_summary(gain))
    rows = [r for r in table.to_pylist() if r["gain"] is not None and np.isfinite(r["gain"])]
    lines = observations(jsonl) if jsonl is not None and rows else {}
    for row in rows:
        row["observation"] = lines.get(row["key"], "")
    ranked = sorted(rows, key=lambda r: (-r["gain"], r["key"]))
    lowest = sorted(rows, key=lambda r: (r["gain"], r["key"]))[:EXTREMES]
    return GainReport(metrics, gain_histogram(gains), ranked[:EXTREMES], lowest)


def empty_report() -> GainReport:
    """No gain file given: the metric says so, the plot is empty."""
    return GainReport({"mean": None, "not_measured": "no gain file (stats --gain)"}, pl.DataFrame(schema=PLOT_SCHEMA), [], [])


def summary_lines(report: GainReport) -> list[str]:
    """The summary's memory-gain section: the figures, then the samples with the highest and lowest gain."""
    m = report.metrics
    lines = ["", "## Memory gain (what the memory teaches)", ""]
    if m.get("mean") is None:
        return lines + [f"Not measured: {m.get('not_measured') or 'no sample could be scored'}."]
    lines.append(
        f"Mean {m['mean']} nats/token (p10 {m['p10']}, p50 {m['p50']}, p90 {m['p90']}) over {m['samples_measured']} samples; "
        f"{m[f'share_below_{LOW_GAIN}']:.0%} below {LOW_GAIN} (answers that barely use the memory). Definitions: docs/gain.md."
    )
    for title, rows in (("Highest gain", report.highest), ("Lowest gain", report.lowest)):
        lines += ["", f"### {title}", "", "| sample | gain (nats/token) | top-1 agreement without memory | observation |", "|---|---|---|---|"]
        for r in rows:
            agreement = "—" if r["top1_agreement"] is None else f"{r['top1_agreement']:.0%}"
            observation = r["observation"].replace("|", "\\|")
            lines.append(f"| {r['key']} | {r['gain']:.3f} | {agreement} | {observation} |")
    return lines
