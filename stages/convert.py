"""convert stage: dataset.jsonl (or the intermediate parquet) -> dataset.parquet in the cartridges format."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from memdistill import fileio, params, shards
from memdistill.conversion import ConvertSummary, convert_file
from memdistill.convert_figures import DEFAULT_MASS_THRESHOLDS, FiguresCollector, figures_path, write_figures
from memdistill.errors import UserError
from memdistill.executors import EXECUTORS
from memdistill.gain.selection import GainSelection

log = logging.getLogger(__name__)


class ConvertConfig(params.StageParams):
    section: ClassVar[str] = "convert"
    # The figures count kept entries at the thresholds the stats stage draws its mass curve at.
    borrowed: ClassVar[dict[str, str]] = {"mass_thresholds": "stats"}

    model: str | None = Field(None, description="tokenizer: hub id, local folder, or smollm2-135m-instruct (null = the teacher recorded in the dataset)")
    min_prob_mass: float = Field(0.99, gt=0, le=1, description="keep per token the fewest top-k entries reaching this probability mass")
    strict: bool = Field(
        False, description="fail on a sample that would be rejected (no logprobs, chosen id not exact) instead of listing it in OUTPUT.rejects.jsonl"
    )
    max_unmapped_rate: float = Field(0.01, ge=0, le=1, description="fail when more than this share of token ids cannot be recovered")
    rows_per_group: int = Field(64, ge=1, description="rows buffered per parquet row group (bounds memory)")
    append_eot: bool = Field(True, description="append the end-of-turn id a teacher that stopped left out of its logprobs")
    executor: Literal[EXECUTORS] = Field("local", description="local: this process; ray: one task per shard on a Ray cluster")
    ray_address: str | None = Field(None, description="executor ray: an existing cluster (head:6379, auto; ray://head:10001 needs ray[client]); null = start a local one")
    num_workers: int = Field(2, ge=1, description="executor ray: tasks at once on a local Ray instance, and shards when shards is null")
    min_memory_gain: float | None = Field(
        None, description="leave out samples whose memory gain (--gain, nats/token) is below this; null = keep every sample"
    )
    shards: int | None = Field(None, ge=1, description="output parts: 1 = one file, N = a directory of about N parts; null = one part per input part (ray: at least num_workers)")
    mass_thresholds: list[float] = Field(
        default_factory=lambda: list(DEFAULT_MASS_THRESHOLDS),
        description="where the figures side output counts kept entries (read from stats.mass_thresholds)",
    )


def output_parts(config: ConvertConfig, input_path: Path) -> int:
    """How many parts the output gets: 1 means a single file (the default for a single input file)."""
    if config.shards is not None:
        return config.shards
    inputs = len(shards.part_files(input_path))
    return max(inputs, config.num_workers) if config.executor == "ray" else inputs


def gain_selection(config: ConvertConfig, gain: Path | None) -> GainSelection | None:
    """Each row's memory gain from the gain stage's file, and the threshold; None without one."""
    if gain is None:
        if config.min_memory_gain is not None:
            raise UserError("convert.min_memory_gain needs the gain stage's file: pass --gain data/gain.parquet")
        return None
    return GainSelection.load(gain, config.min_memory_gain)


def run(config: ConvertConfig, input_path: Path, output: Path, figures: Path | None = None, gain: Path | None = None) -> ConvertSummary:
    """Convert, then write the figures `stats` reads (default: beside the output, see convert_figures.py)."""
    figures = figures or figures_path(output)
    fileio.refuse_input_as_output(output, input_path)
    fileio.refuse_input_as_output(figures, input_path)
    selection = gain_selection(config, gain)
    collector = FiguresCollector(float(config.min_prob_mass), tuple(config.mass_thresholds))
    parts = output_parts(config, input_path)
    if parts > 1 or config.executor == "ray" or input_path.is_dir():
        from memdistill.executors.sharded_convert import convert_sharded

        summary, counted = convert_sharded(
            input_path, output, config.model, float(config.min_prob_mass), config.strict,
            float(config.max_unmapped_rate), config.rows_per_group, config.append_eot,
            parts, config.executor, config.ray_address, config.num_workers, tuple(config.mass_thresholds), selection,
        )
        if counted is not None:
            write_figures(figures, counted)
        log.info("convert: %s", ", ".join(f"{k}={v}" for k, v in summary.to_dict().items()))
        return summary
    shards.replace_with_file(output)
    summary = convert_file(
        input_path, output, config.model, float(config.min_prob_mass), config.strict,
        float(config.max_unmapped_rate), config.rows_per_group, config.append_eot, collector, selection,
    )
    write_figures(figures, collector.finish(input_path, output))
    log.info("convert: %s", ", ".join(f"{k}={v}" for k, v in summary.to_dict().items()))
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, type=fileio.local_path, help="intermediate dataset from generate (.jsonl, or its parquet form)")
    parser.add_argument("--output", required=True, type=fileio.local_path, help="where to write the cartridges parquet")
    parser.add_argument("--figures", type=fileio.local_path, help="where to write the figures stats reads (default: OUTPUT's stem + .figures.json)")
    parser.add_argument("--gain", type=fileio.local_path, help="the gain stage's gain.parquet: each row's memory gain, and min_memory_gain's input")
    parser.add_argument("--params", type=fileio.local_path, help="params.yaml to read the 'convert' section (and stats.mass_thresholds) from")
    params.add_arguments(parser, ConvertConfig)


def main(args: argparse.Namespace) -> int:
    config = params.build(ConvertConfig, args.params, params.flag_values(args, ConvertConfig))
    if config.executor == "local":
        fileio.arrow_without_pandas()  # Ray Data hands pyarrow pandas batches
    run(config, args.input, args.output, args.figures, args.gain)
    return 0
