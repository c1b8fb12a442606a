"""Convert split into shards: each work unit (an input part, or a line span of a JSONL file) becomes one
`part-NNNNN.parquet` of the output directory, converted locally one after another or as Ray tasks.

The units cover the input in order and part numbers follow them, so the parts read in name order hold
the rows in input order. Every unit converts with the same tokenizer (chosen once, here), and what a
single file's convert decides over the whole file is decided here over all units together:
- the unmapped-id limit applies to the sum over all parts;
- one logprob contract (raw or tempered) for the whole dataset, checked across units;
- rejected samples are in no part; they are listed once for the whole output in `<output>.rejects.jsonl`
  beside the directory (`dataset.parquet/` -> `dataset.parquet.rejects.jsonl`, where stats looks), with
  `record` numbered over the whole input, as for a single file;
- the figures side output (convert_figures.py) is each unit's FiguresCollector result merged, so stats
  reads a shard directory's figures without parsing the JSONL;
- the validation split: each unit writes its held-out rows to the same part name in the validation
  directory (an empty part when it holds none), both directories swapped in together; whether the split
  stands (split.too_small) is decided over all units.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from memdistill.convert.conversion import (
    ConvertedPart,
    HeldOut,
    check_converted,
    convert_part,
    keep_split_or_rejoin,
    log_converted,
    rejects_path,
    write_rejects,
)
from memdistill.convert.figures import ConvertFigures, FiguresCollector, held_out_last
from memdistill.convert.outcomes import ConvertSummary
from memdistill.convert.records import recorded_teacher_model
from memdistill.core import fileio
from memdistill.core.errors import UserError
from memdistill.core.shards import LineSpan, atomic_directory, part_files, part_name, split_lines, total_bytes
from memdistill.gain.selection import GainSelection

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
    recorded: str | None = None
    mass_thresholds: tuple[float, ...] | None = None  # None: no figures counted
    validation_fraction: float = 0.0
    validation_seed: int = 0
    footer: tuple[tuple[str, str], ...] = ()
    selection: GainSelection | None = None  # memory gains, and convert.min_memory_gain


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


@dataclass(slots=True)
class UnitResult:
    """One unit's part plus its figures (None when not counted), as they come back from a worker."""

    part: ConvertedPart
    figures: ConvertFigures | None


def convert_unit(unit: ConvertUnit, folder: Path, options: ConvertOptions, held_folder: Path | None = None) -> UnitResult:
    """Convert one unit into `folder/part-NNNNN.parquet` (and its held-out rows into the same name in
    `held_folder`), written atomically."""
    name = part_name(unit.part, PARQUET_SUFFIX)
    collector = None
    if options.mass_thresholds is not None:
        collector = FiguresCollector(options.min_prob_mass, options.mass_thresholds)
    held_out = HeldOut(held_folder / name if held_folder is not None else None, options.validation_fraction, options.validation_seed)
    part = convert_part(
        unit.source, folder / name, options.tokenizer, options.recorded, options.min_prob_mass, options.strict,
        options.rows_per_group, options.append_eot, collector, unit.span, held_out, dict(options.footer), options.selection,
    )
    return UnitResult(part, collector.finish(unit.source, folder / name) if collector is not None else None)


def check_one_logprobs_mode(parts: list[ConvertedPart]) -> None:
    """Each unit checks its own records; across units the first contract seen must hold everywhere."""
    first: tuple[str, str] | None = None
    for part in parts:
        if part.logprobs_mode is None:
            continue
        if first is None:
            first = part.logprobs_mode
        elif part.logprobs_mode[0] != first[0]:
            mode, where = part.logprobs_mode
            raise UserError(
                f"{where}: metadata.teacher.logprobs is '{mode}' but {first[1]} is '{first[0]}'; a dataset must not mix raw "
                f"and tempered logprobs: generate it again with one generate.logprobs"
            )


def merge_rejects(parts: list[ConvertedPart]) -> list[dict[str, Any]]:
    """All units' rejects in input order, `record` renumbered from within its unit to within the whole input."""
    merged: list[dict[str, Any]] = []
    offset = 0
    for part in parts:
        merged.extend({**reject, "record": reject["record"] + offset} for reject in part.rejects)
        offset += part.summary.rows + part.summary.rejected + part.summary.left_out_low_gain  # every record seen
    return merged


def merge_figures(parts: list[ConvertFigures], input_path: Path, *outputs: Path) -> ConvertFigures:
    """The figures of the whole output: counts added, per-record lists joined in part order, K the largest,
    and the sizes those of the whole input and output (what stats compares to tell stale figures)."""
    merged = ConvertFigures(parts[0].min_prob_mass, list(parts[0].thresholds), kept_at=[0] * len(parts[0].thresholds),
                            rows_below=[0] * len(parts[0].thresholds))
    histogram: dict[str, int] = {}
    for figures in parts:
        for f in fields(ConvertFigures):
            value = getattr(figures, f.name)
            if f.name in ("min_prob_mass", "thresholds", "input_bytes", "parquet_bytes", "kept_histogram"):
                continue
            if f.name in ("kept_at", "rows_below"):
                setattr(merged, f.name, [a + b for a, b in zip(getattr(merged, f.name), value)])
            elif f.name in ("recorded_top_k", "top_k"):
                setattr(merged, f.name, max(getattr(merged, f.name), value))
            else:  # sums, and list concatenation for the per-record lists
                setattr(merged, f.name, getattr(merged, f.name) + value)
        for kept, tokens in figures.kept_histogram.items():
            histogram[kept] = histogram.get(kept, 0) + tokens
    merged.kept_histogram = dict(sorted(histogram.items(), key=lambda item: int(item[0])))
    merged.input_bytes = total_bytes(input_path)
    merged.parquet_bytes = sum(total_bytes(output) for output in outputs)
    return merged


def merge_summaries(parts: list[ConvertSummary]) -> ConvertSummary:
    """Counters added up (per-reason counts too); the descriptive fields (tokenizer, model, threshold) from the first part."""
    merged = ConvertSummary(**{f.name: getattr(parts[0], f.name) for f in fields(ConvertSummary)})
    merged.rejected_by_reason = dict(parts[0].rejected_by_reason)
    for summary in parts[1:]:
        for field in fields(ConvertSummary):
            value = getattr(summary, field.name)
            if isinstance(value, int) and not isinstance(value, bool):
                setattr(merged, field.name, getattr(merged, field.name) + value)
        for kind, count in summary.rejected_by_reason.items():
            merged.rejected_by_reason[kind] = merged.rejected_by_reason.get(kind, 0) + count
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


def _run_local(units: list[ConvertUnit], folder: Path, options: ConvertOptions, held_folder: Path | None) -> list[UnitResult]:
    return [convert_unit(unit, folder, options, held_folder) for unit in units]


def _run_ray(
    units: list[ConvertUnit], folder: Path, options: ConvertOptions, held_folder: Path | None, address: str | None, num_workers: int,
) -> list[UnitResult]:
    from memdistill.core.ray_runtime import absolute_if_local, ray_session, unwrap_task_error

    # Workers run in folders of their own: every path they open is absolute (on the shared filesystem).
    units = [replace(unit, source=unit.source.resolve()) for unit in units]
    options = replace(options, tokenizer=absolute_if_local(options.tokenizer))
    with ray_session(address, num_workers) as ray:
        # One CPU per task, and only as many submitted as can run (the cluster's CPUs, or num_workers for an
        # autoscaler to grow into): after a failure nothing new starts, and the running ones are waited for
        # rather than cancelled (a cancel can race the worker's reply, and Ray 2.60's driver then aborts:
        # "Tried to complete task that was not pending"). The staging folder is then removed with no task
        # still writing into it.
        remote = ray.remote(num_cpus=1, max_retries=2)(convert_unit)
        window = max(num_workers, int(ray.cluster_resources().get("CPU", 1)))
        target, todo = folder.resolve(), iter(units)
        held_target = held_folder.resolve() if held_folder is not None else None
        running: dict[Any, int] = {}  # task -> its part number
        results: dict[int, UnitResult] = {}
        failure: BaseException | None = None
        while True:
            while failure is None and len(running) < window and (unit := next(todo, None)) is not None:
                running[remote.remote(unit, target, options, held_target)] = unit.part
            if not running:
                break
            [ready], _ = ray.wait(list(running), num_returns=1)
            part = running.pop(ready)
            try:
                results[part] = ray.get(ready)
            except ray.exceptions.RayError as exc:
                failure = failure or exc
        if failure is not None:
            raise unwrap_task_error(failure) from None
        return [results[unit.part] for unit in units]


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
    mass_thresholds: tuple[float, ...] | None = None,
    held_out: HeldOut = HeldOut(),
    footer: dict[str, str] | None = None,
    selection: GainSelection | None = None,
) -> tuple[ConvertSummary, ConvertFigures | None]:
    """Convert `input_path` (a file or a shard directory) into the shard directory `output` (and the held-out
    observations into the shard directory `held_out.output`), rejected samples into `<output>.rejects.jsonl`
    beside it; with `mass_thresholds`, also the whole output's figures. Both directories or neither.

    About `shards` units (never fewer than the input has parts); `executor` says where they run.
    """
    if not 0.0 < min_prob_mass <= 1.0:
        raise UserError(f"min_prob_mass: must be in (0, 1], got {min_prob_mass}")
    tokenizer, recorded = resolve_tokenizer(input_path, model)
    options = ConvertOptions(tokenizer, min_prob_mass, strict, max_unmapped_rate, rows_per_group, append_eot, recorded,
                             tuple(mass_thresholds) if mass_thresholds is not None else None, held_out.fraction, held_out.seed,
                             tuple(sorted((footer or {}).items())), selection)
    units = plan_units(input_path, shards)
    log.info("convert: %d unit(s) on %s into %s/", len(units), executor, output)
    rejected_file = rejects_path(output)
    with atomic_directory(output) as folder, contextlib.ExitStack() as stack:
        held_folder = stack.enter_context(atomic_directory(held_out.output)) if held_out.output is not None else None
        if executor == "ray":
            results = _run_ray(units, folder, options, held_folder, ray_address, num_workers)
        else:
            results = _run_local(units, folder, options, held_folder)
        parts = [result.part for result in results]
        check_one_logprobs_mode(parts)
        summary = merge_summaries([part.summary for part in parts])
        summary.recorded_model = recorded
        rejects = merge_rejects(parts)
        check_converted(input_path, summary, rejects, max_unmapped_rate)
        name = [part_name(unit.part, PARQUET_SUFFIX) for unit in units]
        keep_split_or_rejoin([(folder / n, held_folder / n if held_folder else None, part) for n, part in zip(name, parts)],
                             held_out.fraction, rows_per_group)
        write_rejects(rejected_file, rejects)
    figures = None
    if options.mass_thresholds is not None:
        outputs = (output, held_out.output) if held_out.output is not None else (output,)
        figures = merge_figures([result.figures for result in results if result.figures is not None], input_path, *outputs)
        held_out_last(figures, np.concatenate([part.held_rows for part in parts]))
    log_converted(summary, rejected_file)
    return summary, figures
