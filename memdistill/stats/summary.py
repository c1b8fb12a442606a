"""reports/summary.md: the stats stage's figures as a page a person reads (tables, plots, warnings)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import polars as pl

from memdistill.gain.report import summary_lines as gain_summary_lines
from memdistill.stats.figures import StatsResult
from memdistill.stats.report import context_rows, generation_rows


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def _bytes(value: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(value) < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def extreme_samples(samples: pl.DataFrame, count: int = 5) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The `count` longest and shortest samples by assistant tokens; ties broken by sample index."""
    longest = samples.sort(["tokens", "sample"], descending=[True, False]).head(count)
    shortest = samples.sort(["tokens", "sample"]).head(count)
    return longest, shortest


def _coverage_cell(memory: dict[str, Any]) -> str:
    coverage = memory["coverage"]
    return "—" if coverage["mean"] is None else f"{coverage['mean']} / {coverage['p10']}"


def render_summary(result: StatsResult, images: Sequence[tuple[str, str]] = ()) -> str:
    """reports/summary.md: the metrics as a short table, the plots (`images`: title and path relative to
    the summary), the mass curve, the extreme samples."""
    m = result.metrics
    tokens = m["assistant_tokens"]
    rows = [
        ("samples", m["samples"]),
        ("failed reference samples (observations whose feedback reads as failed)", m["failed_reference_samples"]),
        ("answers that stopped at max_tokens", f"{m['finish_reasons'].get('length', 0)} ({m['share_hit_max_tokens']:.2%})"),
        ("memory coverage, kept / wanted tokens (mean / p10)", _coverage_cell(m["memory"])),
        ("samples below 50% memory coverage", "—" if m["memory"]["share_below_half"] is None else f"{m['memory']['share_below_half']:.2%}"),
        ("assistant tokens (total)", tokens["total"]),
        ("assistant tokens per sample (mean / p50 / p95)", f"{tokens['mean']} / {tokens['p50']} / {tokens['p95']}"),
        ("K (top_logprobs recorded)", m["top_k"]),
        ("min_prob_mass", m["min_prob_mass"]),
        ("kept entries", f"{m['kept_entries']} of {m['recorded_entries']} recorded"),
        ("mean kept per token", m["mean_kept_per_token"]),
        ("mean probability mass kept", m["mean_mass_kept"]),
        ("token rows whose top-K never reaches min_prob_mass", f"{m['share_rows_below_min_mass']:.2%}"),
        ("unmapped ids (-1)", f"{m['unmapped_tokens']} ({m['unmapped_rate']:.4%})"),
        ("finish reasons", ", ".join(f"{k}: {v}" for k, v in m["finish_reasons"].items()) or "—"),
        ("JSONL size", _bytes(m["jsonl_bytes"])),
        ("parquet size", _bytes(m["parquet_bytes"])),
        ("parquet bytes per assistant token", m["parquet_bytes_per_token"]),
    ]
    if m.get("observations_cut"):
        rows.insert(2, ("samples whose own observation was cut to fit the budget", m["observations_cut"]))
    rows += generation_rows(result.generation)
    lines = [
        "# Dataset summary", "",
        "Written by the stats stage (`memdistill stats`). `metrics/stats.json` keeps the figures compared across "
        "experiments, `metrics/generate.json` the generation's; `reports/stats_detail.json` holds every figure below.", "",
    ]  # fmt: skip
    lines += _table(("run", ""), context_rows(result.context))
    if m.get("warnings"):
        lines += ["", "## Warnings", ""] + [f"- {warning['message']}" for warning in m["warnings"]]
    lines += ["", "## Figures", ""]
    lines += _table(("figure", "value"), rows)
    if images:
        lines += ["", "## Plots", ""]
        for title, path in images:
            lines += [f"![{title}]({path})", ""]
        lines.pop()
    curve = result.plots["mass_curve"]
    lines += ["", "## What other `min_prob_mass` values would cost", ""]
    lines += _table(
        ("min_prob_mass", "entries kept per token", "rows never reaching it", "projected parquet"),
        [
            (f"**{r['threshold']}**" if r["threshold"] == m["min_prob_mass"] else r["threshold"], r["mean_kept_per_token"],
             f"{r['share_rows_below']:.2%}", _bytes(r["projected_parquet_bytes"]))
            for r in curve.iter_rows(named=True)
        ],
    )
    if result.memory_gain is not None:
        lines += gain_summary_lines(result.memory_gain)
    lengths = result.samples["tokens"]
    if lengths.n_unique() == 1:
        # The two tables would list the same samples: say it once.
        lines += ["", "## Longest and shortest samples", "", f"Every answer has {lengths[0]} assistant tokens."]
        return "\n".join(lines) + "\n"
    longest, shortest = extreme_samples(result.samples)
    for title, frame in (("Longest samples", longest), ("Shortest samples", shortest)):
        lines += ["", f"## {title}", ""]
        lines += _table(
            ("sample", "assistant tokens", "finish reason", "memory chars"),
            [(r["sample"], r["tokens"], r["finish_reason"], "—" if r["memory_size_chars"] is None else r["memory_size_chars"])
             for r in frame.iter_rows(named=True)],
        )
    return "\n".join(lines) + "\n"
