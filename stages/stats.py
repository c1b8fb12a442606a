"""stats stage: dataset.jsonl + dataset.parquet -> metrics/stats.json (the headline figures), plot data for DVC,
reports/summary.md and reports/stats_detail.json (every figure).

The mass curve (entries kept and projected parquet size for min_prob_mass from 0.5 to 0.999) tells at
one look what any other `convert.min_prob_mass` would cost. Convert counts it while it parses the JSONL
and writes it beside the parquet (`dataset.figures.json`); stats reads that, and parses the JSONL itself
only when the figures are absent or stale.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from memdistill.convert.figures import figures_path
from memdistill.core import fileio, params
from memdistill.stats.card import git_revision, render_card
from memdistill.stats.figures import DEFAULT_MASS_THRESHOLDS, StatsResult, compute_stats
from memdistill.stats.plots import PLOTS, render_plots, write_plots
from memdistill.stats.summary import render_summary
from stages.convert import ConvertConfig

log = logging.getLogger(__name__)


class StatsConfig(params.StageParams):
    section: ClassVar[str] = "stats"
    borrowed: ClassVar[dict[str, str]] = {"min_prob_mass": "convert"}

    min_prob_mass: float = Field(
        ConvertConfig.model_fields["min_prob_mass"].default, gt=0, le=1, description="the threshold convert used (read from convert.min_prob_mass)"
    )
    mass_thresholds: list[float] = Field(
        default_factory=lambda: list(DEFAULT_MASS_THRESHOLDS), description="min_prob_mass values for the mass curve, comma-separated"
    )


def load_config(params_path: Path | None, flags: dict[str, Any] | None = None) -> StatsConfig:
    """min_prob_mass from `convert.min_prob_mass` (what convert used), thresholds from `stats`; flags win."""
    return params.build(StatsConfig, params_path, flags or {})


def run(
    jsonl: Path,
    parquet: Path,
    metrics_path: Path,
    plots_dir: Path | None = None,
    summary_path: Path | None = None,
    config: StatsConfig | None = None,
    generate_metrics: Path | None = None,
    figures: Path | None = None,
    detail_path: Path | None = None,
    validation: Path | None = None,
    card: Path | None = None,
    gain: Path | None = None,
) -> StatsResult:
    """Writes the headline figures to `metrics_path`, every figure (the report) to `detail_path`."""
    config = config or StatsConfig()
    figures = figures or figures_path(parquet)
    result = compute_stats(jsonl, parquet, config.min_prob_mass, generate_metrics, tuple(config.mass_thresholds), figures, validation, gain)
    plots = [plots_dir / f"{name}.csv" for name in result.plots] if plots_dir is not None else []
    plots += [plots_dir / f"{spec.name}.svg" for spec in PLOTS] if plots_dir is not None else []
    for output in (metrics_path, summary_path, detail_path, card, *plots):
        if output is not None:
            fileio.refuse_input_as_output(output, jsonl, parquet, generate_metrics, figures, validation, gain)
    # Every output is computed before the first is written: a failure leaves the old set intact.
    # The folders are this stage's own (DVC does not create them), so a fresh clone needs no mkdir.
    svgs = render_plots(result.plots) if plots_dir is not None else {}
    card_text = None
    if card is not None:
        titles = {spec.name: spec.title for spec in PLOTS}
        shown = [(titles[name], os.path.relpath(plots_dir / f"{name}.svg", card.parent)) for name in svgs] if plots_dir is not None else []
        card_text = render_card(parquet, validation, card.parent, result.metrics, shown, git_revision(card.parent))
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    with fileio.atomic_output(metrics_path) as handle:
        json.dump(result.headline, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
    if detail_path is not None:
        detail_path.parent.mkdir(parents=True, exist_ok=True)
        with fileio.atomic_output(detail_path) as handle:
            json.dump(result.metrics, handle, indent=2, ensure_ascii=False)
            handle.write("\n")
    if plots_dir is not None:
        plots_dir.mkdir(parents=True, exist_ok=True)
        for name, frame in result.plots.items():
            with fileio.atomic_path(plots_dir / f"{name}.csv") as tmp:
                frame.write_csv(tmp)
    images = write_plots(plots_dir, svgs) if plots_dir is not None else []
    if summary_path is not None:
        summary_path.parent.mkdir(parents=True, exist_ok=True)
        titles = {spec.name: spec.title for spec in PLOTS}
        embedded = [(titles[path.stem], os.path.relpath(path, summary_path.parent)) for path in images]
        with fileio.atomic_output(summary_path) as handle:
            handle.write(render_summary(result, embedded))
    if card is not None and card_text is not None:
        with fileio.atomic_output(card) as handle:
            handle.write(card_text)
    log.info(
        "stats: %d samples, %d assistant tokens, %.2f kept entries per token",
        result.metrics["samples"],
        result.metrics["assistant_tokens"]["total"],
        result.metrics["mean_kept_per_token"],
    )
    for warning in result.metrics["warnings"]:
        log.warning("stats: %s", warning["message"])
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jsonl", required=True, type=fileio.local_path, help="intermediate dataset.jsonl (for the mass curve)")
    parser.add_argument("--parquet", required=True, type=fileio.local_path, help="cartridges parquet from convert")
    parser.add_argument("--metrics", required=True, type=fileio.local_path, help="where to write stats.json (a DVC metric)")
    parser.add_argument("--plots-dir", type=fileio.local_path, help="folder for plot data (CSV files DVC renders) and the plots drawn offline (SVG)")
    parser.add_argument("--summary", type=fileio.local_path, help="where to write a readable markdown summary (reports/summary.md)")
    parser.add_argument("--detail", type=fileio.local_path, help="where to write every figure as JSON (reports/stats_detail.json); --metrics keeps the headline ones")
    parser.add_argument("--generate-metrics", type=fileio.local_path, help="metrics/generate.json to show in the summary (skipped if absent)")
    parser.add_argument("--validation", type=fileio.local_path, help="convert's validation split (figures cover both; metrics count each)")
    parser.add_argument("--card", type=fileio.local_path, help="where to write the dataset card (data/README.md, Hugging Face convention)")
    parser.add_argument("--figures", type=fileio.local_path, help="convert's figures (default: the parquet's stem + .figures.json; the JSONL is read when absent)")
    parser.add_argument("--gain", type=fileio.local_path, help="the gain stage's gain.parquet: memory gain figures, histogram and extremes")
    parser.add_argument("--params", type=fileio.local_path, help="params.yaml: reads convert.min_prob_mass and stats.mass_thresholds")
    params.add_arguments(parser, StatsConfig)


def main(args: argparse.Namespace) -> int:
    config = load_config(args.params, params.flag_values(args, StatsConfig))
    fileio.arrow_without_pandas()
    run(args.jsonl, args.parquet, args.metrics, args.plots_dir, args.summary, config, args.generate_metrics, args.figures,
        args.detail, args.validation, args.card, args.gain)
    return 0
