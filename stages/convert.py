"""convert stage: dataset.jsonl (or the intermediate parquet) -> dataset.parquet in the cartridges format."""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from memdistill import params, shards
from memdistill.conversion import ConvertSummary, convert_file
from memdistill.convert_figures import DEFAULT_MASS_THRESHOLDS, FiguresCollector, figures_path, write_figures
from memdistill.errors import UserError
from memdistill.executors import EXECUTORS

log = logging.getLogger(__name__)


@dataclass
class ConvertConfig:
    model: str | None = None
    min_prob_mass: float = 0.99
    strict: bool = False
    max_unmapped_rate: float = 0.01
    rows_per_group: int = 64
    append_eot: bool = True
    executor: str = "local"  # local: this process | ray: one task per shard on a Ray cluster
    ray_address: str | None = None  # executor ray: an existing cluster (e.g. ray://head:10001, auto); null = start a local one
    num_workers: int = 2  # executor ray: CPUs (tasks at once) of a local Ray instance, and shards when `shards` is null
    shards: int | None = None  # output parts: 1 = one file; N = a directory of about N parts; null = one part per input part (ray: at least num_workers)
    mass_thresholds: tuple[float, ...] = DEFAULT_MASS_THRESHOLDS  # where the figures side output counts kept entries (params: stats.mass_thresholds)

    def validate(self) -> None:
        if isinstance(self.min_prob_mass, bool) or not isinstance(self.min_prob_mass, (int, float)):
            raise UserError(f"min_prob_mass: expected a number in (0, 1], got {self.min_prob_mass!r}")
        if not 0.0 < float(self.min_prob_mass) <= 1.0:
            raise UserError(f"min_prob_mass: must be in (0, 1], got {self.min_prob_mass}")
        if not isinstance(self.max_unmapped_rate, (int, float)) or not 0.0 <= float(self.max_unmapped_rate) <= 1.0:
            raise UserError(f"max_unmapped_rate: must be in [0, 1], got {self.max_unmapped_rate!r}")
        if not isinstance(self.rows_per_group, int) or self.rows_per_group < 1:
            raise UserError(f"rows_per_group: must be an integer >= 1, got {self.rows_per_group!r}")
        if self.executor not in EXECUTORS:
            raise UserError(f"executor: expected one of {', '.join(EXECUTORS)}, got '{self.executor}'")
        if not isinstance(self.num_workers, int) or self.num_workers < 1:
            raise UserError(f"num_workers: must be an integer >= 1, got {self.num_workers!r}")
        if self.shards is not None and (not isinstance(self.shards, int) or self.shards < 1):
            raise UserError(f"shards: must be an integer >= 1 (or null), got {self.shards!r}")
        for name in ("strict", "append_eot"):
            if not isinstance(getattr(self, name), bool):
                raise UserError(f"{name}: expected true or false, got {getattr(self, name)!r}")


def output_parts(config: ConvertConfig, input_path: Path) -> int:
    """How many parts the output gets: 1 means a single file (the default for a single input file)."""
    if config.shards is not None:
        return config.shards
    inputs = len(shards.part_files(input_path))
    return max(inputs, config.num_workers) if config.executor == "ray" else inputs


def run(config: ConvertConfig, input_path: Path, output: Path, figures: Path | None = None) -> ConvertSummary:
    """Convert, then write the figures `stats` reads (default: beside the output, see convert_figures.py)."""
    config.validate()
    parts = output_parts(config, input_path)
    if parts > 1 or config.executor == "ray" or input_path.is_dir():
        from memdistill.executors.sharded_convert import convert_sharded

        summary, counted = convert_sharded(
            input_path, output, config.model, float(config.min_prob_mass), config.strict,
            float(config.max_unmapped_rate), config.rows_per_group, config.append_eot,
            parts, config.executor, config.ray_address, config.num_workers, tuple(config.mass_thresholds),
        )
        if counted is not None:
            write_figures(figures or figures_path(output), counted)
        log.info("convert: %s", ", ".join(f"{k}={v}" for k, v in summary.to_dict().items()))
        return summary
    shards.replace_with_file(output)
    collector = FiguresCollector(float(config.min_prob_mass), config.mass_thresholds)
    summary = convert_file(
        input_path, output, config.model, float(config.min_prob_mass), config.strict,
        float(config.max_unmapped_rate), config.rows_per_group, config.append_eot, collector,
    )
    write_figures(figures or figures_path(output), collector.finish(input_path, output))
    log.info("convert: %s", ", ".join(f"{k}={v}" for k, v in summary.to_dict().items()))
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, type=Path, help="intermediate dataset from generate (.jsonl, or its parquet form)")
    parser.add_argument("--output", required=True, type=Path, help="where to write the cartridges parquet")
    parser.add_argument("--model", help="tokenizer: hub id, local folder, or smollm2-135m-instruct (default: the teacher recorded in the dataset)")
    parser.add_argument("--min-prob-mass", type=float, help="keep per token the fewest top-k entries reaching this mass (default 0.99)")
    parser.add_argument("--strict", action="store_true", default=None, help="fail on a sample that would be rejected (no logprobs, chosen id not exact) instead of listing it in OUTPUT.rejects.jsonl")
    parser.add_argument("--max-unmapped-rate", type=float, help="fail when more than this share of token ids cannot be recovered (default 0.01)")
    parser.add_argument("--executor", choices=EXECUTORS, help="local: this process; ray: one task per shard on a Ray cluster")
    parser.add_argument("--ray-address", help="executor ray: address of an existing cluster (default: start a local one)")
    parser.add_argument("--num-workers", type=int, help="executor ray: tasks at once on a local Ray instance")
    parser.add_argument("--shards", type=int, help="write the output as a directory of about this many part files")
    parser.add_argument("--figures", type=Path, help="where to write the figures stats reads (default: OUTPUT's stem + .figures.json)")
    parser.add_argument("--params", type=Path, help="params.yaml to read the 'convert' section (and stats.mass_thresholds) from")


def main(args: argparse.Namespace) -> int:
    flags = {"model": args.model, "min_prob_mass": args.min_prob_mass, "strict": args.strict, "max_unmapped_rate": args.max_unmapped_rate,
             "executor": args.executor, "ray_address": args.ray_address, "num_workers": args.num_workers, "shards": args.shards}
    source = f"{args.params} [convert]" if args.params else "convert flags"
    # The figures count kept entries at the thresholds the stats stage draws its mass curve at.
    thresholds = params.load_section(args.params, "stats").get("mass_thresholds")
    if thresholds is not None and not (isinstance(thresholds, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in thresholds)):
        raise UserError(f"{args.params}: stats.mass_thresholds must be a list of numbers, got {thresholds!r}")
    flags["mass_thresholds"] = tuple(thresholds) if thresholds is not None else None
    merged = params.merge(asdict(ConvertConfig()), params.load_section(args.params, "convert"), flags)
    run(params.build_config(ConvertConfig, merged, source), args.input, args.output, args.figures)
    return 0
