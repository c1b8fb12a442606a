"""Convert split into shards: each work unit (an input part, or a line span of a JSONL file) becomes one
`part-NNNNN.parquet` of the output directory, converted locally one after another or as Ray tasks.

The units cover the input in order and part numbers follow them, so the parts read in name order hold
the rows in input order. Every unit converts with the same tokenizer (chosen once, here), and the
unmapped-id limit applies to the sum over all parts, as for a single file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from pathlib import Path

from memdistill import fileio
from memdistill.conversion import ConvertSummary, convert_file, recorded_teacher_model
from memdistill.errors import UserError
from memdistill.shards import LineSpan, atomic_directory, part_files, part_name, split_lines

log = logging.getLogger(__name__)

PARQUET_SUFFIX = ".parquet"


@dataclass(frozen=True, slots=True)
class ConvertUnit:
    """One shard of work: a file, or the span of a JSONL file; `part` numbers the output file."""

    part: int
    source: Path
    span: LineSpan | None = None


@dataclass(frozen=True, slots=True)
class ConvertOptions:
    """Everything convert_file needs besides its input and output (the tokenizer already resolved)."""

    tokenizer: str
    min_prob_mass: float
    strict: bool
    max_unmapped_rate: float
    rows_per_group: int
    append_eot: bool


def spans_per_file(sizes: list[int], wanted: int) -> list[int]:
    """How many spans each file is cut into: about `wanted` in all, by size, at least one per file."""
    total = sum(sizes)
    if wanted <= len(sizes) or total == 0:
        return [1] * len(sizes)
    return [max(1, round(wanted * size / total)) for size in sizes]


def plan_units(input_path: Path, wanted: int) -> list[ConvertUnit]:
    """Work units covering the input in order: every part file, JSONL ones cut into line spans.

    A parquet input part is one unit (its row groups are not split).
    """
    files = part_files(input_path)
    counts = spans_per_file([f.stat().st_size for f in files], wanted)
    units: list[ConvertUnit] = []
    for source, count in zip(files, counts):
        if count > 1 and not fileio.is_parquet(source):
            for span in split_lines(source, count):
                units.append(ConvertUnit(len(units), source, span))
        else:
            units.append(ConvertUnit(len(units), source))
    return units


def convert_unit(unit: ConvertUnit, folder: Path, options: ConvertOptions) -> ConvertSummary:
    """Convert one unit into `folder/part-NNNNN.parquet` (written atomically)."""
    return convert_file(
        unit.source, folder / part_name(unit.part, PARQUET_SUFFIX), options.tokenizer, options.min_prob_mass,
        options.strict, 1.0,  # the limit is checked on the sum of all parts
        options.rows_per_group, options.append_eot, unit.span,
    )


def merge_summaries(parts: list[ConvertSummary]) -> ConvertSummary:
    """Counters added up; the descriptive fields (tokenizer, model, threshold) taken from the first part."""
    merged = ConvertSummary(**{f.name: getattr(parts[0], f.name) for f in fields(ConvertSummary)})
    for summary in parts[1:]:
        for field in fields(ConvertSummary):
            value = getattr(summary, field.name)
            if isinstance(value, int) and not isinstance(value, bool):
                setattr(merged, field.name, getattr(merged, field.name) + value)
    return merged


def resolve_tokenizer(input_path: Path, model: str | None) -> tuple[str, str | None]:
    """(tokenizer name, recorded teacher model) for the whole dataset: --model, else the first part's teacher."""
    recorded = recorded_teacher_model(part_files(input_path)[0])
    name = model or recorded
    if not name:
        raise UserError(
            f"{input_path}: the dataset records no teacher model (metadata.teacher.model); "
            f"pass --model (a hub id, a local folder, or smollm2-135m-instruct)"
        )
    return name, recorded


def _run_local(units: list[ConvertUnit], folder: Path, options: ConvertOptions) -> list[ConvertSummary]:
    return [convert_unit(unit, folder, options) for unit in units]


def _run_ray(units: list[ConvertUnit], folder: Path, options: ConvertOptions, address: str | None, num_workers: int) -> list[ConvertSummary]:
    from memdistill.executors.ray_runtime import ray_session, unwrap_task_error

    with ray_session(address, num_workers) as ray:
        # One CPU per task: at most as many units run at once as the cluster has CPUs for.
        remote = ray.remote(num_cpus=1, max_retries=2)(convert_unit)
        pending = [remote.remote(unit, folder.resolve(), options) for unit in units]
        try:
            return ray.get(pending)
        except ray.exceptions.RayTaskError as exc:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise unwrap_task_error(exc) from None


def convert_sharded(
    input_path: Path,
    output: Path,
    model: str | None,
    min_prob_mass: float,
    strict: bool,
    max_unmapped_rate: float,
    rows_per_group: int,
    append_eot: bool,
    shards: int,
    executor: str = "local",
    ray_address: str | None = None,
    num_workers: int = 2,
) -> ConvertSummary:
    """Convert `input_path` (a file or a shard directory) into the shard directory `output`.

    About `shards` units (never fewer than the input has parts); `executor` says where they run.
    """
    if not 0.0 < min_prob_mass <= 1.0:
        raise UserError(f"min_prob_mass: must be in (0, 1], got {min_prob_mass}")
    tokenizer, recorded = resolve_tokenizer(input_path, model)
    options = ConvertOptions(tokenizer, min_prob_mass, strict, max_unmapped_rate, rows_per_group, append_eot)
    units = plan_units(input_path, shards)
    log.info("convert: %d unit(s) on %s into %s/", len(units), executor, output)
    with atomic_directory(output) as folder:
        if executor == "ray":
            parts = _run_ray(units, folder, options, ray_address, num_workers)
        else:
            parts = _run_local(units, folder, options)
        summary = merge_summaries(parts)
        summary.recorded_model = recorded
        if summary.unmapped_rate > max_unmapped_rate:
            raise UserError(
                f"{input_path}: {summary.unmapped_ids} token ids ({summary.unmapped_rate:.1%}, more than "
                f"max_unmapped_rate {max_unmapped_rate:.1%}) could not be mapped: dataset generated by "
                f"{recorded or 'an unrecorded model'}, converting with {tokenizer}; pass --model with the teacher's tokenizer"
            )
    return summary

