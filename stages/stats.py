"""stats stage: dataset.jsonl + dataset.parquet -> metrics/stats.json and plot data for DVC."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from memdistill import fileio
from memdistill.errors import UserError
from memdistill.stats import compute_stats

log = logging.getLogger(__name__)


def run(jsonl: Path, parquet: Path, metrics_path: Path, plots_dir: Path | None) -> dict:
    for path in (jsonl, parquet):
        if not path.is_file():
            raise UserError(f"{path}: file not found")
    result = compute_stats(jsonl, parquet)
    with fileio.atomic_output(metrics_path) as handle:
        json.dump(result.metrics, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
    if plots_dir is not None:
        plots_dir.mkdir(parents=True, exist_ok=True)
        for name, frame in result.plots.items():
            with fileio.atomic_path(plots_dir / f"{name}.csv") as tmp:
                frame.write_csv(tmp)
    log.info("stats: %d samples, %d assistant tokens", result.metrics["samples"], result.metrics["assistant_tokens"]["total"])
    return result.metrics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jsonl", required=True, type=Path, help="intermediate dataset.jsonl")
    parser.add_argument("--parquet", required=True, type=Path, help="cartridges parquet from convert")
    parser.add_argument("--metrics", required=True, type=Path, help="where to write stats.json (a DVC metric)")
    parser.add_argument("--plots-dir", type=Path, help="folder for plot data (CSV files DVC renders)")


def main(args: argparse.Namespace) -> int:
    run(args.jsonl, args.parquet, args.metrics, args.plots_dir)
    return 0
