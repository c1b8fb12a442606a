"""Reading the intermediate dataset: records one by one (gain, the recorded teacher, error wording) and blocks
of records as arrow tables for convert's engine (engine.py).

A JSONL block is whole lines read in one piece and parsed by pyarrow's JSON reader with an explicit schema
(`INPUT_SCHEMA`: no Python object per top-k entry); a parquet block is a batch of generate's intermediate
parquet, which has the same columns. `metadata` is free-form, so arrow only says whether a line has one; its
value is read from the line's own text (`line_metadata`). A block arrow cannot take exactly raises
`Unreadable`, and the caller has its records checked one by one (checks.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from memdistill.core import fileio
from memdistill.core.errors import UserError
from memdistill.core.intermediate_parquet import MESSAGE
from memdistill.core.shards import LineSpan

# JSONL is read in blocks of about this many bytes (whole lines): bounds the reader's memory. Larger blocks
# cost fewer per-block look-ups (docs/benchmarks.md: 4 MiB against 2 MiB, 10M entries).
BLOCK_BYTES = 4 << 20
ARROW_BLOCK_BYTES = 1 << 20
# Parquet input: records per block.
PARQUET_BATCH_ROWS = 64
_METADATA_KEY = b'"metadata"'


def _input_schema() -> Any:
    import pyarrow as pa

    # `metadata` is an empty struct: arrow only says whether it is an object (its text is read from the line).
    return pa.schema([("messages", pa.list_(MESSAGE)), ("system_prompt", pa.string()), ("type", pa.string()), ("metadata", pa.struct([]))])


INPUT_SCHEMA = _input_schema()


class Unreadable(Exception):
    """A block the arrow reader does not take exactly (a bad line, a field of another type, a null where an
    object belongs); its records are checked one by one, which words the error or normalises them."""


@dataclass(slots=True)
class Block:
    """Records ready for the engine: the arrow table (INPUT_SCHEMA's columns), each record's metadata object
    and where it is (file:line, or file: row N). `lines` (JSONL) or `records` (parquet) are kept for the
    record-by-record check when the engine cannot take the block."""

    table: Any
    metadata: list[dict[str, Any]]
    wheres: list[str]
    lines: list[bytes] | None = None
    records: Any = None  # parquet: the batch as read, with `metadata` (parsed, any type)

    def raw_records(self) -> Iterator[tuple[str, Any]]:
        """(where, record) of every record of the block, parsed one by one."""
        if self.records is not None:
            batch, metadata = self.records
            yield from zip(self.wheres, ({**row, "metadata": m} for row, m in zip(batch.to_pylist(), metadata)))
            return
        for line, where in zip(self.lines or [], self.wheres):
            yield where, parse_line(line, where, exact=True)


# ---------------------------------------------------------------------------------------- record by record


def parse_line(line: bytes, where: str, exact: bool = False) -> Any:
    """One JSONL line's value. orjson reads an integer past 64 bits as a float; `exact` keeps it whole (as
    the engine reads metadata), at json's speed."""
    if not exact:
        try:
            return orjson.loads(line)
        except orjson.JSONDecodeError:
            pass
    # orjson rejects NaN/Infinity literals that Python's json writes; parse them so the logprob check
    # can name the field instead of calling the whole line malformed.
    try:
        return json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        detail = f"{exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
        raise UserError(f"{where}: not valid JSON ({detail})") from None


def _numbered_lines(handle: Any, span: LineSpan | None) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of an open binary file, or of one span of it (a shard of a sharded convert)."""
    if span is None:
        yield from enumerate(handle, start=1)
        return
    handle.seek(span.start)
    remaining = span.end - span.start
    for lineno, line in enumerate(handle, start=span.first_line):
        if remaining <= 0:
            return
        remaining -= len(line)
        yield lineno, line


def iter_jsonl(path: Path, span: LineSpan | None = None) -> Iterator[tuple[str, Any]]:
    with open(path, "rb") as handle:
        for lineno, line in _numbered_lines(handle, span):
            if line.strip():
                where = f"{path}:{lineno}"
                yield where, parse_line(line, where)


def _parquet_metadata(text: Any, path: Path, number: int) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text) if text else {}
    except json.JSONDecodeError:
        raise UserError(f"{path}: row {number}: metadata is not valid JSON") from None


def iter_parquet(path: Path, batch_rows: int = PARQUET_BATCH_ROWS) -> Iterator[tuple[str, Any]]:
    """The intermediate parquet (generate's `output_format: parquet`): the same fields as a JSONL line."""
    import pyarrow.parquet as pq

    number = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
        for row in batch.to_pylist():
            row["metadata"] = _parquet_metadata(row.get("metadata"), path, number)
            yield f"{path}: row {number}", row
            number += 1


def iter_records(path: Path, span: LineSpan | None = None) -> Iterator[tuple[str, Any]]:
    """(where, record) for every row of the intermediate dataset; `where` names file and line for errors."""
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    return iter_parquet(path) if fileio.is_parquet(path) else iter_jsonl(path, span)


def recorded_teacher_model(path: Path) -> str | None:
    """The teacher model named in the first row's metadata, if the file records one."""
    for _, row in iter_records(path):
        metadata = row.get("metadata") if isinstance(row, dict) else None
        # A malformed row is reported by the conversion itself, with its line.
        teacher = metadata.get("teacher") if isinstance(metadata, dict) else None
        model = teacher.get("model") if isinstance(teacher, dict) else None
        return model if isinstance(model, str) and model else None
    return None


# ------------------------------------------------------------------------------------------------ blocks


def jsonl_chunks(path: Path, block_bytes: int = BLOCK_BYTES, span: LineSpan | None = None) -> Iterator[bytes]:
    """Whole lines of about `block_bytes` at a time, of a JSONL file or one span of it; one read per chunk,
    so a file of long lines costs no Python work per line."""
    with open(path, "rb") as handle:
        remaining = span.end - span.start if span is not None else -1
        if span is not None:
            handle.seek(span.start)
        carry = b""
        while remaining:
            chunk = handle.read(block_bytes if remaining < 0 else min(block_bytes, remaining))
            if not chunk:
                break
            remaining -= len(chunk) if remaining > 0 else 0
            data = carry + chunk if carry else chunk
            cut = data.rfind(b"\n") + 1
            if cut == 0:  # one line longer than the block so far: read on
                carry = data
                continue
            yield data if cut == len(data) else data[:cut]
            carry = data[cut:]
        if carry:
            yield carry


@dataclass(slots=True)
class Chunk:
    """A chunk's non-blank lines (JSON whitespace stripped), each one's line number within the chunk (from 0),
    how many lines the chunk holds, and what arrow reads (the chunk itself when its lines need no cleaning)."""

    lines: list[bytes]
    numbers: list[int]
    line_count: int
    data: bytes


def split_lines(chunk: bytes) -> Chunk:
    """A chunk of whole lines as `Chunk`: one split; stripping and joining again only when some line needs it."""
    parts = chunk.split(b"\n")
    if parts[-1] == b"":
        parts.pop()
    if all(part[:1] == b"{" and part[-1:] == b"}" for part in parts):
        return Chunk(parts, list(range(len(parts))), len(parts), chunk)
    lines: list[bytes] = []
    numbers: list[int] = []
    for number, part in enumerate(parts):
        line = part.strip(b" \t\r")
        if line:
            lines.append(line)
            numbers.append(number)
    return Chunk(lines, numbers, len(parts), b"\n".join(lines))


def parse_lines(chunk: Chunk, parse_options: Any) -> Any:
    """The arrow table of a chunk's lines (INPUT_SCHEMA), or `Unreadable`."""
    import pyarrow as pa
    import pyarrow.json as pj

    lines = chunk.lines
    # Only lines that look like one object: pyarrow crashes (segfault) on input starting with a top-level
    # `null`, and a line holding several values is the record-by-record check's to reject.
    if not all(line[:1] == b"{" and line[-1:] == b"}" for line in lines):
        raise Unreadable("a line that is not an object")
    try:
        # One thread per chunk (convert parses several chunks at once); arrow's block holds the longest line whole.
        read_options = pj.ReadOptions(block_size=max(max(map(len, lines)) + 1, ARROW_BLOCK_BYTES), use_threads=False)
        table = pj.read_json(pa.BufferReader(chunk.data), read_options=read_options, parse_options=parse_options)
    except Exception as exc:  # noqa: BLE001 - arrow's parse and type errors, bad UTF-8: the check words them
        raise Unreadable(str(exc)) from None
    if table.num_rows != len(lines):
        raise Unreadable("not one object per line")
    return table.combine_chunks()


def line_metadata(line: bytes, present: bool) -> dict[str, Any]:
    """The record's `metadata` object, parsed from the line's own text (it is free-form).

    Read from the last "metadata" key when it is a member of the line's own object (where generate writes it,
    near the end: found from the end, so the long line is not scanned), else where `"metadata":` occurs as a key exactly once in the line (so it
    is the top-level one arrow saw; the same string as a token value is not followed by a colon), else from
    the whole line parsed. json's
    parser gives the same values as orjson's, reads NaN/Infinity, and keeps an integer past 64 bits whole.
    Not an object where arrow saw one: `Unreadable` (the check words it)."""
    last = line.rfind(_METADATA_KEY)
    if last >= 0 and present:
        value, end = _value_after_key(line, last + len(_METADATA_KEY))
        if isinstance(value, dict) and _closes_the_line(line[end:]):
            return value
    keys: list[int] = []
    at = line.find(_METADATA_KEY)
    while at >= 0:
        after = at + len(_METADATA_KEY)
        if line[after:after + 8].lstrip()[:1] == b":":
            keys.append(after)
        at = line.find(_METADATA_KEY, after)
    if not keys and not present:
        return {}
    if len(keys) == 1:
        value, _ = _value_after_key(line, keys[0])
    else:
        whole = json.loads(line)
        value = whole.get("metadata") if isinstance(whole, dict) else None
    if value is None and not present:
        return {}
    if not isinstance(value, dict) or not present:
        raise Unreadable("metadata value")
    return value


_JSON_DECODER = json.JSONDecoder()


def _closes_the_line(rest: bytes) -> bool:
    """Whether what follows a member's value is the rest of the line's own object: `}`, or more members and
    `}` (then `{` + the members is one JSON object). A member nested deeper is followed by another `}`
    first, or by what does not parse as one object."""
    rest = rest.strip()
    if rest == b"}":
        return True
    if rest[:1] != b"," or len(rest) > 4096:
        return False
    try:
        return isinstance(json.loads(b"{" + rest[1:]), dict)
    except ValueError:
        return False


def _value_after_key(line: bytes, after: int) -> tuple[Any, int]:
    """The JSON value after the key ending at byte `after` (its colon next), and the byte where it ends;
    (None, -1) when no colon follows (the string is a value, not a key)."""
    rest = line[after:after + 16].lstrip()
    if rest[:1] != b":":
        return None, -1
    text = line[after:].decode("utf-8")
    start = text.index(":") + 1
    start += len(text[start:start + 64]) - len(text[start:start + 64].lstrip())
    value, end = _JSON_DECODER.raw_decode(text, start)
    return value, after + len(text[:end].encode("utf-8"))


def parquet_blocks(path: Path, batch_rows: int = PARQUET_BATCH_ROWS) -> Iterator[Block]:
    """Blocks of generate's intermediate parquet: its columns as INPUT_SCHEMA's (a file of other types is
    checked record by record), metadata from its JSON text."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    number = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
        table = pa.Table.from_batches([batch])
        wheres = [f"{path}: row {number + i}" for i in range(table.num_rows)]
        texts = table.column("metadata").to_pylist() if "metadata" in table.column_names else [None] * table.num_rows
        metadata = [_parquet_metadata(text, path, number + i) for i, text in enumerate(texts)]
        number += table.num_rows
        try:
            columns = [table.column(name).cast(INPUT_SCHEMA.field(name).type) if name in table.column_names
                       else pa.nulls(table.num_rows, INPUT_SCHEMA.field(name).type) for name in ("messages", "system_prompt", "type")]
            typed = pa.Table.from_arrays(columns, names=["messages", "system_prompt", "type"]).combine_chunks()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            typed = None
        if any(m is not None and not isinstance(m, dict) for m in metadata):
            typed = None
        yield Block(typed, [m or {} for m in metadata], wheres, records=(table, metadata))
