"""The convert stage: intermediate JSONL (or parquet) -> cartridges parquet, mass-sparsified, streaming.

Blocks of records (records.py: JSONL read a chunk of whole lines at a time and parsed by pyarrow's JSON
reader, parquet a batch at a time) go through the one engine (engine.py, assemble.py); a block it cannot
take goes through the record-by-record check (checks.py), which words the error or hands the block back
normalised for the engine. While the engine converts one JSONL block, the next ones are parsed on worker
threads. Rows are written one row group at a time, so peak memory depends on the block and
`rows_per_group`, never on the file size.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from memdistill.convert.cartridges_io import CartridgesWriter, OutRow, rejoin
from memdistill.convert.checks import RecordChecker
from memdistill.convert.engine import Engine
from memdistill.convert.figures import FiguresCollector, held_out_last
from memdistill.convert.outcomes import ConvertSummary, SampleRejected, Unconvertible
from memdistill.convert.records import (
    BLOCK_BYTES,
    INPUT_SCHEMA,
    Block,
    Chunk,
    Unreadable,
    jsonl_chunks,
    line_metadata,
    parquet_blocks,
    parse_lines,
    recorded_teacher_model,
    split_lines,
)
from memdistill.convert.split import SplitCounts, in_validation, too_small
from memdistill.convert.token_ids import load_text_tokenizer
from memdistill.core import fileio
from memdistill.core.errors import UserError
from memdistill.core.shards import LineSpan
from memdistill.gain.selection import GainSelection

log = logging.getLogger(__name__)
# JSONL blocks parsed at once (each by one thread) while the engine converts the one before them.
PARSE_THREADS = 2


def rejects_path(output: Path) -> Path:
    """Where the samples left out of the parquet are listed, with their reasons: beside the output."""
    return output.with_name(output.name + ".rejects.jsonl")


def _parsed_chunk(data: bytes, parse_options: Any) -> tuple[Chunk, Any]:
    """A chunk's lines and their arrow table (None: arrow does not take them); on a worker thread."""
    chunk = split_lines(data)
    if not chunk.lines:
        return chunk, None
    try:
        return chunk, parse_lines(chunk, parse_options)
    except Unreadable:
        return chunk, None


def _jsonl_blocks(path: Path, span: LineSpan | None) -> Iterator[Block]:
    """The blocks of a JSONL file (or one span of it), PARSE_THREADS of them parsed at once on worker threads
    (one thread each) while the engine converts the block before them; a block arrow does not take has no
    table. Parsing releases the GIL, so the parse and the engine share the cores."""
    import pyarrow.json as pj

    parse_options = pj.ParseOptions(explicit_schema=INPUT_SCHEMA, unexpected_field_behavior="ignore")
    first_line = span.first_line if span is not None else 1
    with ThreadPoolExecutor(PARSE_THREADS, thread_name_prefix="convert-parse") as pool:
        pending: deque[Future] = deque()
        chunks = jsonl_chunks(path, BLOCK_BYTES, span)
        while True:
            for data in chunks:
                pending.append(pool.submit(_parsed_chunk, data, parse_options))
                if len(pending) > PARSE_THREADS:
                    break
            if not pending:
                return
            chunk, table = pending.popleft().result()
            wheres = [f"{path}:{first_line + number}" for number in chunk.numbers]
            first_line += chunk.line_count
            if not chunk.lines:
                continue
            metadata: list[dict[str, Any]] = []
            if table is not None:
                present = table.column("metadata").is_valid().to_numpy(zero_copy_only=False)
                try:
                    metadata = [line_metadata(line, bool(flag)) for line, flag in zip(chunk.lines, present)]
                except (Unreadable, ValueError):
                    table = None
            yield Block(table, metadata, wheres, lines=chunk.lines)


def iter_outcomes(path: Path, engine: Engine, span: LineSpan | None = None) -> Iterator[OutRow | SampleRejected | None]:
    """Per record of the file (or its span), in order: its row, the rejection that kept it out, or None (below
    convert.min_memory_gain)."""
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    import pyarrow as pa

    checker = RecordChecker(engine)
    blocks = parquet_blocks(path) if fileio.is_parquet(path) else _jsonl_blocks(path, span)
    # Arrow's default allocator (mimalloc) keeps freed blocks mapped: ~50 MB more peak RSS per run; the
    # system allocator returns them, so peak memory stays that of the blocks in flight. Restored afterwards.
    previous_pool = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        for block in blocks:
            try:
                if block.table is None:
                    raise Unconvertible("not read by arrow")
                outcomes = engine.convert(block.table, block.metadata, block.wheres)
            except Unconvertible as why:
                log.debug("%s: records checked one by one for %s..%s (%s)", path, block.wheres[0], block.wheres[-1], why)
                checked = checker.normalised(block)
                try:
                    outcomes = engine.convert(checked.table, checked.metadata, checked.wheres)
                except Unconvertible as still:  # the check passed what the engine refuses: a fault of ours
                    raise UserError(f"{block.wheres[0]}..{block.wheres[-1]}: convert cannot read these records ({still}); "
                                    f"please report it with the lines") from None
            yield from outcomes
    finally:
        pa.set_memory_pool(previous_pool)


def iter_converted(path: Path, engine: Engine, span: LineSpan | None = None) -> Iterator[OutRow]:
    """The rows to write, in file order."""
    return (outcome for outcome in iter_outcomes(path, engine, span) if isinstance(outcome, OutRow))


@dataclass
class ConvertedPart:
    """What converting one file (or one span of it) produced besides the parquet: the counters, the samples
    it rejected (`record` numbered within this part), the logprob contract its records declare, and the split:
    its counts and, per row written in input order, whether it went to the validation file."""

    summary: ConvertSummary
    rejects: list[dict[str, Any]]
    logprobs_mode: tuple[str, str] | None  # (mode, where it was first seen); None when no record says
    split: SplitCounts = field(default_factory=SplitCounts)
    held_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))


@dataclass(frozen=True, slots=True)
class HeldOut:
    """The validation split: the file held-out rows go to (None: no split), the share of observations, the seed."""

    output: Path | None = None
    fraction: float = 0.0
    seed: int = 0


def convert_part(
    input_path: Path,
    output: Path,
    tokenizer_name: str,
    recorded: str | None,
    min_prob_mass: float,
    strict: bool = False,
    rows_per_group: int = 64,
    append_eot: bool = True,
    figures: FiguresCollector | None = None,
    span: LineSpan | None = None,
    held_out: HeldOut = HeldOut(),
    footer: dict[str, str] | None = None,
    selection: GainSelection | None = None,
) -> ConvertedPart:
    """Write the converted rows of `input_path` (or its `span`) to the parquet `output`, the rows of held-out
    observations to `held_out.output`, both atomically, with `footer` (and the counters) in their footers.

    No whole-dataset checks here (unmapped-id limit, nothing left to write, a split too small to stand) and no
    rejects file: the caller decides those over everything it converts (one file, or all parts of a shard directory).
    """
    summary = ConvertSummary(tokenizer=tokenizer_name, recorded_model=recorded, min_prob_mass=min_prob_mass)
    engine = Engine(load_text_tokenizer(tokenizer_name), min_prob_mass, strict, summary, append_eot)
    engine.figures = figures
    engine.selection = selection
    split = SplitCounts()
    held_rows: list[bool] = []
    with fileio.atomic_path(output) as tmp, contextlib.ExitStack() as stack:
        held_tmp = stack.enter_context(fileio.atomic_path(held_out.output)) if held_out.output is not None else None
        writers = [CartridgesWriter(tmp, rows_per_group=rows_per_group)]
        if held_tmp is not None:
            writers.append(CartridgesWriter(held_tmp, rows_per_group=rows_per_group))
        try:
            for row in tqdm(iter_converted(input_path, engine, span), desc="convert", unit="row", dynamic_ncols=True, mininterval=1.0):
                held = held_tmp is not None and in_validation(row.observation, held_out.fraction, held_out.seed)
                writers[held].write(row)
                split.add(row.observation, held)
                held_rows.append(held)
                summary.rows += 1
            for writer in writers:
                for key, value in {**(footer or {}), "memdistill.convert": json.dumps(summary.to_dict())}.items():
                    writer.set_footer(key, value)
        except BaseException:
            for writer in writers:
                writer.abort()
            raise
        for writer in writers:
            writer.close()
    return ConvertedPart(summary, engine.rejects, engine.logprobs_mode, split, np.asarray(held_rows, dtype=bool))


def keep_split_or_rejoin(parts: list[tuple[Path, Path | None, ConvertedPart]], fraction: float, rows_per_group: int) -> None:
    """Over the whole output (`parts`: train file, validation file, what was converted into them): when the
    split cannot stand (split.too_small), say so in one line and put every held-out row back into train."""
    counts = SplitCounts()
    for _, _, part in parts:
        counts.merge(part.split)
    reason = too_small(counts, fraction) if any(held is not None for _, held, _ in parts) else None
    if reason is None:
        if counts.validation_rows:
            log.info("convert: %d row(s) of %d observation(s) in validation, %d row(s) of %d observation(s) in train",
                     counts.validation_rows, len(counts.validation_observations), counts.train_rows, len(counts.train_observations))
        return
    log.warning("convert: %s", reason)
    for train, held, part in parts:
        if held is not None and part.held_rows.any():
            rejoin(train, held, part.held_rows, rows_per_group)
        part.held_rows = np.zeros_like(part.held_rows)


def check_converted(input_path: Path, summary: ConvertSummary, rejects: list[dict[str, Any]], max_unmapped_rate: float) -> None:
    """The checks over a whole converted dataset: the unmapped-id limit, and at least one row written."""
    if summary.unmapped_rate > max_unmapped_rate:
        raise UserError(
            f"{input_path}: {summary.unmapped_ids} token ids ({summary.unmapped_rate:.1%}, more than "
            f"max_unmapped_rate {max_unmapped_rate:.1%}) could not be recovered exactly: dataset generated by "
            f"{summary.recorded_model or 'an unrecorded model'}, converting with {summary.tokenizer}; pass --model with the teacher's tokenizer"
        )
    if summary.rows == 0:
        if summary.left_out_low_gain:
            raise UserError(f"{input_path}: every sample ({summary.left_out_low_gain}) is below convert.min_memory_gain; lower it or set it to null")
        if rejects:
            raise UserError(f"{input_path}: every sample was rejected ({summary.rejected}), e.g. {rejects[0]['reason']}")
        raise UserError(f"{input_path}: no rows to convert (the file is empty)")


def log_converted(summary: ConvertSummary, rejected_file: Path) -> None:
    if summary.rejected:
        log.warning("%d sample(s) rejected (not in the parquet): %s; listed in %s", summary.rejected,
                    ", ".join(f"{k}: {v}" for k, v in sorted(summary.rejected_by_reason.items())), rejected_file)
    if summary.dropped_alternatives:
        log.warning("%d top-k alternative(s) whose id could not be recovered exactly were dropped from their rows", summary.dropped_alternatives)
    if summary.left_out_low_gain:
        log.info("%d sample(s) below convert.min_memory_gain left out (listed in convert's figures)", summary.left_out_low_gain)
    if summary.eot_appended:
        log.warning("%d assistant message(s) stopped on end-of-turn without its logprob; appended it at logprob 0", summary.eot_appended)


def convert_file(
    input_path: Path,
    output: Path,
    model: str | None,
    min_prob_mass: float,
    strict: bool = False,
    max_unmapped_rate: float = 0.01,
    rows_per_group: int = 64,
    append_eot: bool = True,
    figures: FiguresCollector | None = None,
    held_out: HeldOut = HeldOut(),
    footer: dict[str, str] | None = None,
    selection: GainSelection | None = None,
) -> ConvertSummary:
    """Convert one intermediate file into one cartridges parquet (and the held-out observations into
    `held_out.output`), rejected samples into `<output>.rejects.jsonl`; both parquet files or neither."""
    if not 0.0 < min_prob_mass <= 1.0:
        raise UserError(f"min_prob_mass: must be in (0, 1], got {min_prob_mass}")
    if not input_path.is_file():
        raise UserError(f"{input_path}: file not found")
    fileio.ensure_parent(output)
    recorded = recorded_teacher_model(input_path)
    tokenizer_name = model or recorded
    if not tokenizer_name:
        raise UserError(
            f"{input_path}: the dataset records no teacher model (metadata.teacher.model); "
            f"pass --model (a hub id, a local folder, or smollm2-135m-instruct)"
        )
    rejected_file = rejects_path(output)
    with fileio.atomic_path(output) as tmp, contextlib.ExitStack() as stack:
        # Written to temporary paths, so a failed check leaves the previous outputs in place.
        held_tmp = stack.enter_context(fileio.atomic_path(held_out.output)) if held_out.output is not None else None
        part = convert_part(input_path, tmp, tokenizer_name, recorded, min_prob_mass, strict, rows_per_group, append_eot, figures,
                            held_out=HeldOut(held_tmp, held_out.fraction, held_out.seed), footer=footer, selection=selection)
        check_converted(input_path, part.summary, part.rejects, max_unmapped_rate)
        keep_split_or_rejoin([(tmp, held_tmp, part)], held_out.fraction, rows_per_group)
        if figures is not None:
            held_out_last(figures.figures, part.held_rows)
        write_rejects(rejected_file, part.rejects)
    log_converted(part.summary, rejected_file)
    return part.summary


def write_rejects(path: Path, rejects: list[dict[str, Any]]) -> None:
    """The rejected samples, one JSON object a line; no file when none (a stale list would mislead)."""
    if not rejects:
        path.unlink(missing_ok=True)
        return
    with fileio.atomic_output(path) as handle:
        for reject in rejects:
            handle.write(fileio.dump_json_line(reject))
