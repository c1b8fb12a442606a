"""File I/O at the edges: atomic outputs and line-numbered JSONL reading."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from memdistill.errors import UserError


def ensure_parent(path: Path) -> None:
    """Fail clearly when the output's folder is missing, rather than creating a typo'd tree."""
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"{path}: output folder {parent} does not exist")


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable: the directory entry itself must reach the disk."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _temporary_beside(target: Path) -> str:
    """A new temporary file next to `target`, after removing ones a killed earlier run left behind."""
    ensure_parent(target)
    for stale in target.parent.glob(f".{target.name}.*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    return tmp_name


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsync'd and renamed into place.

    A crash or an exception never leaves a partial file at `path`: either the old content stays or
    the complete new content appears.
    """
    target = Path(path)
    tmp_name = _temporary_beside(target)
    try:
        yield Path(tmp_name)
        with open(tmp_name, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
        _fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """`atomic_path` with an open handle (text mode is UTF-8)."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=None if "b" in mode else "utf-8") as handle:
            yield handle


def is_parquet(path: str | os.PathLike[str]) -> bool:
    """True when the file starts with parquet's magic bytes, whatever its name."""
    with open(path, "rb") as handle:
        return handle.read(4) == b"PAR1"


def read_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, Any]]:
    """Yield (line number, parsed object) for each non-blank line; a bad line is a UserError naming it."""
    source = Path(path)
    if not source.is_file():
        raise UserError(f"{source}: file not found")
    with open(source, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{source}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None


def dump_json_line(obj: Any) -> str:
    """One compact JSON line, UTF-8 kept readable, stable key order as given."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n"
