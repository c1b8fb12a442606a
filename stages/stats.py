"""stats stage: dataset.jsonl + dataset.parquet -> metrics/stats.json, plot data for DVC, reports/summary.md.

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
from dataclasses import dataclass
from pathlib import Path

from memdistill import fileio, params
from memdistill.errors import UserError
from memdistill.convert_figures import figures_path
from memdistill.plots import PLOTS, render_plots, write_plots
from memdistill.stats import DEFAULT_MASS_THRESHOLDS, StatsResult, compute_stats, render_summary
from stages.convert import ConvertConfig

log = logging.getLogger(__name__)

DEFAULT_MIN_PROB_MASS = ConvertConfig.min_prob_mass


@dataclass(frozen=True, slots=True)
class StatsConfig:
    min_prob_mass: float = DEFAULT_MIN_PROB_MASS
    mass_thresholds: tuple[float, ...] = DEFAULT_MASS_THRESHOLDS


def load_config(params_path: Path | None, min_prob_mass: float | None, thresholds: list[float] | None) -> StatsConfig:
    """min_prob_mass from `convert.min_prob_mass` (what convert used), thresholds from `stats`; flags win."""
    convert = params.load_section(params_path, "convert")
    section = params.load_section(params_path, "stats")
    unknown = sorted(set(section) - {"mass_thresholds"})
    if unknown:
        raise UserError(f"{params_path}: unknown parameter(s) in 'stats': {', '.join(unknown)}; expected mass_thresholds")
    mass = min_prob_mass if min_prob_mass is not None else convert.get("min_prob_mass", DEFAULT_MIN_PROB_MASS)
    listed = thresholds if thresholds is not None else section.get("mass_thresholds", list(DEFAULT_MASS_THRESHOLDS))
    if not isinstance(mass, (int, float)) or isinstance(mass, bool):
        raise UserError(f"{params_path}: convert.min_prob_mass must be a number, got {mass!r}")
    if not isinstance(listed, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in listed):
        raise UserError(f"{params_path}: stats.mass_thresholds must be a list of numbers, got {listed!r}")
    return StatsConfig(float(mass), tuple(float(v) for v in listed))


def run(
    jsonl: Path,
    parquet: Path,
    metrics_path: Path,
    plots_dir: Path | None = None,
    summary_path: Path | None = None,
    config: StatsConfig = StatsConfig(),
    generate_metrics: Path | None = None,
    figures: Path | None = None,
) -> StatsResult:
    figures = figures or figures_path(parquet)
    result = compute_stats(jsonl, parquet, config.min_prob_mass, generate_metrics, config.mass_thresholds, figures)
    # Every output is computed before the first is written: a failure leaves the old set intact.
    # The folders are this stage's own (DVC does not create them), so a fresh clone needs no mkdir.
    svgs = render_plots(result.plots) if plots_dir is not None else {}
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    with fileio.atomic_output(metrics_path) as handle:
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
    log.info(
        "stats: %d samples, %d assistant tokens, %.2f kept entries per token",
        result.metrics["samples"],
        result.metrics["assistant_tokens"]["total"],
        result.metrics["mean_kept_per_token"],
    )
    return result


def _thresholds(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 0.5,0.9,0.99, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jsonl", required=True, type=Path, help="intermediate dataset.jsonl (for the mass curve)")
    parser.add_argument("--parquet", required=True, type=Path, help="cartridges parquet from convert")
    parser.add_argument("--metrics", required=True, type=Path, help="where to write stats.json (a DVC metric)")
    parser.add_argument("--plots-dir", type=Path, help="folder for plot data (CSV files DVC renders) and the plots drawn offline (SVG)")
    parser.add_argument("--summary", type=Path, help="where to write a readable markdown summary (reports/summary.md)")
    parser.add_argument("--generate-metrics", type=Path, help="metrics/generate.json to show in the summary (skipped if absent)")
    parser.add_argument("--figures", type=Path, help="convert's figures (default: the parquet's stem + .figures.json; the JSONL is read when absent)")
    parser.add_argument("--params", type=Path, help="params.yaml: reads convert.min_prob_mass and stats.mass_thresholds")
    parser.add_argument("--min-prob-mass", type=float, help="the threshold convert used (default: convert.min_prob_mass, else 0.99)")
    parser.add_argument("--mass-thresholds", type=_thresholds, help="comma-separated thresholds for the mass curve (default 0.5..0.999)")


def main(args: argparse.Namespace) -> int:
    config = load_config(args.params, args.min_prob_mass, args.mass_thresholds)
    run(args.jsonl, args.parquet, args.metrics, args.plots_dir, args.summary, config, args.generate_metrics, args.figures)
    return 0
