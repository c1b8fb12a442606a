"""File I/O at the edges: atomic outputs and line-numbered JSONL reading."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from filelock import FileLock, Timeout

from memdistill.core.errors import UserError

log = logging.getLogger(__name__)


# s3://, gs://, hdfs://, file://...: a scheme of two or more letters (C:/ stays a path) and "://".
URL_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+://")


def url_refusal(text: str) -> str | None:
    """Why a path given as a URL cannot be used, or None for a path. Only local paths are read and written:
    pathlib would turn s3://bucket/x into a local folder `s3:`."""
    if URL_PREFIX.match(text):
        return (f"{text} is a URL; memdistill reads and writes local paths only (on a cluster: a filesystem "
                "every node mounts, e.g. NFS or Lustre; mount a bucket with s3fs or gcsfuse, or copy the files)")
    return None


def local_path(text: str) -> Path:
    """The argparse type of every path flag: a URL is refused (argparse names the flag), before anything runs."""
    if reason := url_refusal(text):
        raise argparse.ArgumentTypeError(reason)
    return Path(text)


def ensure_parent(path: Path) -> None:
    """Fail clearly when the output's folder is missing, rather than creating a typo'd tree."""
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"{path}: output folder {parent} does not exist")


def refuse_input_as_output(output: str | os.PathLike[str], *inputs: str | os.PathLike[str] | None) -> None:
    """Writing an output over one of the run's own inputs would destroy it: refuse before any work."""
    target = Path(output)
    for source in inputs:
        if source is None:
            continue
        source = Path(source)
        same = target.resolve() == source.resolve()
        if not same and target.exists() and source.exists():
            same = os.path.samefile(target, source)  # hard links
        if same:
            raise UserError(f"{target}: this output is also an input ({source}); choose another output path")


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable: the directory entry itself must reach the disk."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


def output_mode(directory: bool = False) -> int:
    """The mode an ordinary new file (0666) or folder (0777) gets under the user's umask: what every output
    is given, including those made through mkstemp/mkdtemp, which create them private (0600/0700)."""
    return (0o777 if directory else 0o666) & ~_umask()


def _temporary_beside(target: Path) -> str:
    """A new temporary file next to `target`, after removing ones a killed earlier run left behind.

    Only call with `target`'s lock held: the temporaries of a live run are then never this run's to remove.
    """
    for stale in target.parent.glob(f".{target.name}.*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.fchmod(fd, output_mode())
    os.close(fd)
    return tmp_name


def lock_path(target: Path) -> Path:
    """The lock file that guards writes to `target`: one per absolute path, kept in the cache folder so
    output folders (and `git status`) stay clean."""
    from memdistill.core.models import cache_root

    resolved = str(target.parent.resolve() / target.name)
    folder = cache_root() / "locks"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home: the temporary folder still serves every run of this user
        folder = Path(tempfile.gettempdir()) / f"memdistill-locks-{os.getuid()}"
        folder.mkdir(exist_ok=True)
    return folder / f"{target.name}.{hashlib.sha256(resolved.encode()).hexdigest()[:16]}.lock"


@contextlib.contextmanager
def output_lock(target: Path) -> Iterator[None]:
    """Hold the exclusive lock on `target`; a second run writing the same output waits for the first."""
    lock = FileLock(lock_path(target))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        holder = _lock_holder(lock_path(target))
        log.info("%s is being written by %s; waiting for it to finish", target, f"pid {holder}" if holder else "another run")
        lock.acquire()
    try:
        with contextlib.suppress(OSError):
            Path(lock_path(target)).write_text(f"{os.getpid()}\n", encoding="ascii")
        yield
    finally:
        lock.release()


def _lock_holder(path: Path) -> str:
    with contextlib.suppress(OSError, UnicodeDecodeError):
        return path.read_text(encoding="ascii").strip()
    return ""


def _name_target(exc: OSError, tmp_name: str, target: Path) -> None:
    """Error messages name the output the user asked for, never the hidden temporary beside it."""
    if exc.filename == tmp_name or (exc.filename is None and exc.errno is not None):
        exc.filename = str(target)
    if exc.filename2 == tmp_name:
        exc.filename2 = str(target)
    if exc.strerror is None and len(exc.args) == 1 and tmp_name in str(exc.args[0]):
        exc.args = (str(exc.args[0]).replace(tmp_name, str(target)),)  # pyarrow puts the path in its message


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsync'd and renamed into place.

    A crash or an exception never leaves a partial file at `path`: either the old content stays or
    the complete new content appears. Runs writing the same `path` take turns (see `output_lock`).
    """
    target = Path(path)
    ensure_parent(target)
    with output_lock(target):
        tmp_name = _temporary_beside(target)
        try:
            yield Path(tmp_name)
            with open(tmp_name, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp_name, target)
            _fsync_dir(target.parent)
        except BaseException as exc:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
            if isinstance(exc, OSError):
                _name_target(exc, tmp_name, target)
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


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (write null or a finite number)")


def read_jsonl(path: str | os.PathLike[str], allow_nan: bool = True) -> Iterator[tuple[int, Any]]:
    """Yield (line number, parsed object) for each non-blank line; a bad line is a UserError naming it.

    `allow_nan=False` also refuses the NaN/Infinity literals that Python's json writes and strict
    parsers (polars, orjson) reject."""
    source = Path(path)
    if not source.is_file():
        raise UserError(f"{source}: file not found")
    with open(source, "rb") as handle:  # decoded line by line, so a bad byte is named by its line
        for lineno, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
                yield lineno, json.loads(line) if allow_nan else json.loads(line, parse_constant=_no_constants)
            except json.JSONDecodeError as exc:
                raise UserError(f"{source}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            except RecursionError:
                raise UserError(f"{source}:{lineno}: JSON nested too deeply to read") from None
            except UnicodeDecodeError as exc:
                raise UserError(f"{source}:{lineno}: not UTF-8 text ({exc.reason} at byte {exc.start} of the line)") from None
            except ValueError as exc:  # NaN/Infinity with allow_nan=False
                raise UserError(f"{source}:{lineno}: {exc}") from None


def dump_json_line(obj: Any) -> str:
    """One compact JSON line, UTF-8 kept readable, stable key order as given."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n"


def arrow_without_pandas() -> None:
    """Let pyarrow run without importing pandas, in a command that never hands it a pandas object.

    pyarrow imports pandas on its first array only to ask whether its input is a pandas object: up to
    0.25 s and about 30 MB of peak memory when converting a million top-k entries. Run once at a command's start, the
    question finds no pandas and pyarrow does not ask again in this process (its explicit pandas
    conversions, `to_pandas` and `from_pandas`, still import it). A pandas object given to `pyarrow.array`
    afterwards would be read as a plain sequence, hence only for our own commands' processes; nothing is
    changed once pandas is imported.
    """
    import importlib.abc
    import sys

    if "pandas" in sys.modules:
        return

    class NoPandas(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
            if name == "pandas" or name.startswith("pandas."):
                raise ImportError("pandas is not used by this command")

    import pyarrow as pa

    finder = NoPandas()
    sys.meta_path.insert(0, finder)
    try:
        pa.array([0])  # pyarrow's one question: is pandas there?
    finally:
        sys.meta_path.remove(finder)
