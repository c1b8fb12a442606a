"""Sharded datasets: a directory `name.jsonl/` or `name.parquet/` of `part-00000.<ext>` files read as one.

A shard directory is what `pandas.read_parquet`, pyarrow and cartridges' `read_conversations` read for
parquet; every memdistill reader (convert, stats, inspect) accepts a plain file or such a directory, and
reads the parts in name order, so a sharded output holds its rows in the same order as a single file.
Shards are written into a temporary directory beside the target and swapped in at the end, so a failed
or killed run leaves the previous output (or nothing), never a directory with some parts missing.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memdistill.core import fileio
from memdistill.core.errors import UserError

PART_PREFIX = "part-"


def part_name(index: int, suffix: str) -> str:
    """`part-00003.parquet` for index 3 and suffix `.parquet`."""
    return f"{PART_PREFIX}{index:05d}{suffix}"


def part_files(path: Path) -> list[Path]:
    """The files a dataset path stands for: itself, or the `part-*` files of a shard directory in order."""
    if path.is_file():
        return [path]
    if path.is_dir():
        parts = sorted(p for p in path.iterdir() if p.is_file() and p.name.startswith(PART_PREFIX))
        if not parts:
            raise UserError(f"{path}: a directory without {PART_PREFIX}* files; expected a file or a shard directory")
        return parts
    raise UserError(f"{path}: file not found")


def total_bytes(path: Path) -> int:
    return sum(part.stat().st_size for part in part_files(path))


@dataclass(frozen=True, slots=True)
class LineSpan:
    """Bytes [start, end) of a JSONL file, cut at line ends; `first_line` is the 1-based number of its first line."""

    start: int
    end: int
    first_line: int


def _next_line_start(handle, target: int, chunk_bytes: int) -> int | None:
    """The offset just after the first newline at or after byte target - 1 (so a line start stays one)."""
    position = max(0, target - 1)
    handle.seek(position)
    while chunk := handle.read(chunk_bytes):
        newline = chunk.find(b"\n")
        if newline >= 0:
            return position + newline + 1
        position += len(chunk)
    return None


def _count_newlines(handle, start: int, end: int, chunk_bytes: int) -> int:
    handle.seek(start)
    count = 0
    remaining = end - start
    while remaining > 0 and (chunk := handle.read(min(chunk_bytes, remaining))):
        count += chunk.count(b"\n")
        remaining -= len(chunk)
    return count


def split_lines(path: Path, count: int, chunk_bytes: int = 1 << 22) -> list[LineSpan]:
    """Cut a JSONL file into at most `count` spans of about equal size, each a run of whole lines.

    The cuts are found by seeking; one pass counting newlines (bytes.count, no per-line Python) keeps
    the line numbers in error messages those of the whole file.
    """
    size = path.stat().st_size
    if count <= 1 or size == 0:
        return [LineSpan(0, size, 1)]
    cuts: list[int] = []
    with open(path, "rb") as handle:
        for i in range(1, count):
            target = max(size * i // count, cuts[-1] + 1 if cuts else 0)
            cut = _next_line_start(handle, target, chunk_bytes)
            if cut is None or cut >= size:
                break
            if not cuts or cut > cuts[-1]:
                cuts.append(cut)
        spans: list[LineSpan] = []
        start, first = 0, 1
        for cut in cuts:
            spans.append(LineSpan(start, cut, first))
            first += _count_newlines(handle, start, cut, chunk_bytes)
            start = cut
    spans.append(LineSpan(start, size, first))
    return spans


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """Yield an empty temporary directory beside `path`; on success it replaces `path` (file or directory).

    The previous output is moved aside first and removed after the swap; a failure discards the new
    directory and leaves the previous output where it was.
    """
    fileio.ensure_parent(path)
    for stale in path.parent.glob(f".{path.name}.*.tmpdir"):
        _remove(stale)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmpdir", dir=path.parent))
    os.chmod(tmp, fileio.output_mode(directory=True))  # it becomes the output: a folder like any other
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    old = None
    if path.exists() or path.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmpdir", dir=path.parent))
        os.replace(path, old / "previous")
    os.replace(tmp, path)
    if old is not None:
        _remove(old)


def replace_with_file(path: Path) -> None:
    """Before writing a single file where a shard directory was: remove the directory (a file cannot replace it)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)


def part_sizes(count: int, parts: int) -> list[int]:
    """Rows per part when `count` rows in order are cut into `parts` contiguous parts of near-equal size."""
    parts = max(1, min(parts, count)) if count else 1
    return [count * (i + 1) // parts - count * i // parts for i in range(parts)]


OUTPUT_FORMATS = ("jsonl", "parquet")


def write_records(output: Path, records: Iterable[dict[str, Any]], count: int, parts: int, output_format: str = "jsonl") -> None:
    """The intermediate dataset's `count` records in order, as JSONL or parquet, in one file or `parts` parts."""
    if output_format == "jsonl":
        write_jsonl_lines(output, (fileio.dump_json_line(record) for record in records), count, parts)
        return
    from memdistill.core.intermediate_parquet import write_intermediate_parquet

    if parts <= 1:
        replace_with_file(output)
        with fileio.atomic_path(output) as tmp:
            write_intermediate_parquet(tmp, records)
        return
    iterator = iter(records)
    with atomic_directory(output) as folder:
        for index, size in enumerate(part_sizes(count, parts)):
            part = folder / part_name(index, ".parquet")
            write_intermediate_parquet(part, itertools.islice(iterator, size))
            with open(part, "rb") as handle:
                os.fsync(handle.fileno())


def write_jsonl_lines(output: Path, lines: Iterable[str], count: int, parts: int) -> None:
    """Write `count` lines in order: one file when `parts` <= 1, else a shard directory of contiguous parts."""
    if parts <= 1:
        replace_with_file(output)
        with fileio.atomic_output(output) as handle:
            handle.writelines(lines)
        return
    iterator = iter(lines)
    with atomic_directory(output) as folder:
        for index, size in enumerate(part_sizes(count, parts)):
            with open(folder / part_name(index, ".jsonl"), "w", encoding="utf-8") as handle:
                handle.writelines(itertools.islice(iterator, size))
                handle.flush()
                os.fsync(handle.fileno())
        for extra in iterator:  # never expected: count was wrong; losing rows silently would be worse
            raise AssertionError(f"more rows than the {count} announced: {extra[:80]}")
