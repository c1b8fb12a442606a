"""convert stage: dataset.jsonl (or the intermediate parquet) -> dataset.parquet in the cartridges format."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from memdistill.convert.conversion import HeldOut, convert_file
from memdistill.convert.figures import DEFAULT_MASS_THRESHOLDS, FiguresCollector, figures_path, write_figures
from memdistill.convert.outcomes import ConvertSummary
from memdistill.convert.split import validation_path
from memdistill.core import fileio, params, shards
from memdistill.core.errors import UserError
from memdistill.core.executors import EXECUTORS
from memdistill.core.lineage import FOOTER_KEY, file_lineage
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
    validation_fraction: float = Field(
        0.1, ge=0, lt=1, description="share of observations (all rows of each) held out in the validation file; 0 = no split"
    )
    validation_seed: int = Field(0, description="seed of the observation hash that picks the validation split")
    mass_thresholds: list[float] = Field(
        default_factory=lambda: list(DEFAULT_MASS_THRESHOLDS),
        description="where the figures side output counts kept entries (read from stats.mass_thresholds)",
    )


# The params file's sections of the stages upstream of convert, recorded in the parquet footer (dvc.yaml
# declares them as convert's params too, so the footer never outlives a change to them).
UPSTREAM_SECTIONS = ("snapshots", "generate")


def footer(config: ConvertConfig, input_path: Path, params_path: Path | None) -> dict[str, str]:
    """The footer's lineage: convert's parameters as resolved, the upstream stages' from the params file, the input's md5."""
    stages = {section: values for section, values in params.read_params_file(params_path).items() if section in UPSTREAM_SECTIONS} if params_path else {}
    stages["convert"] = config.model_dump(mode="json")
    return {FOOTER_KEY: file_lineage(stages, {str(input_path): input_path})}


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


def run(
    config: ConvertConfig, input_path: Path, output: Path, figures: Path | None = None, validation: Path | None = None,
    params_path: Path | None = None, gain: Path | None = None,
) -> ConvertSummary:
    """Convert, then write the figures `stats` reads (default: beside the output, see convert_figures.py).

    Held-out rows go to `validation` (default: validation_path(output)); the file is written whenever one is
    named or the fraction is above 0, empty when nothing is held out, so a pipeline always has its output.
    """
    figures = figures or figures_path(output)
    fileio.refuse_input_as_output(output, input_path)
    fileio.refuse_input_as_output(figures, input_path)
    if validation is None and config.validation_fraction > 0:
        validation = validation_path(output)
    if validation is not None:
        fileio.refuse_input_as_output(validation, input_path, output)
    held_out = HeldOut(validation, float(config.validation_fraction), config.validation_seed)
    lineage = footer(config, input_path, params_path)
    selection = gain_selection(config, gain)
    collector = FiguresCollector(float(config.min_prob_mass), tuple(config.mass_thresholds))
    parts = output_parts(config, input_path)
    if parts > 1 or config.executor == "ray" or input_path.is_dir():
        from memdistill.convert.sharded import convert_sharded

        summary, counted = convert_sharded(
            input_path, output, config.model, float(config.min_prob_mass), config.strict,
            float(config.max_unmapped_rate), config.rows_per_group, config.append_eot,
            parts, config.executor, config.ray_address, config.num_workers, tuple(config.mass_thresholds), held_out, lineage, selection,
        )
        if counted is not None:
            write_figures(figures, counted)
        log.info("convert: %s", ", ".join(f"{k}={v}" for k, v in summary.to_dict().items()))
        return summary
    shards.replace_with_file(output)
    if validation is not None:
        shards.replace_with_file(validation)
    summary = convert_file(
        input_path, output, config.model, float(config.min_prob_mass), config.strict,
        float(config.max_unmapped_rate), config.rows_per_group, config.append_eot, collector, held_out, lineage, selection,
    )
    write_figures(figures, collector.finish(input_path, *(p for p in (output, validation) if p is not None)))
    log.info("convert: %s", ", ".join(f"{k}={v}" for k, v in summary.to_dict().items()))
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, type=fileio.local_path, help="intermediate dataset from generate (.jsonl, or its parquet form)")
    parser.add_argument("--output", required=True, type=fileio.local_path, help="where to write the cartridges parquet")
    parser.add_argument("--validation", type=fileio.local_path,
                        help="where to write the held-out observations' rows (default: OUTPUT's stem + .validation.parquet, when validation_fraction > 0)")
    parser.add_argument("--figures", type=fileio.local_path, help="where to write the figures stats reads (default: OUTPUT's stem + .figures.json)")
    parser.add_argument("--gain", type=fileio.local_path, help="the gain stage's gain.parquet: each row's memory gain, and min_memory_gain's input")
    parser.add_argument("--params", type=fileio.local_path, help="params.yaml to read the 'convert' section (and stats.mass_thresholds) from")
    params.add_arguments(parser, ConvertConfig)


def main(args: argparse.Namespace) -> int:
    config = params.build(ConvertConfig, args.params, params.flag_values(args, ConvertConfig))
    if config.executor == "local":
        fileio.arrow_without_pandas()  # Ray Data hands pyarrow pandas batches
    run(config, args.input, args.output, args.figures, args.validation, args.params, args.gain)
    return 0
