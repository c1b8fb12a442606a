"""HistoryAgent checkpoints: find a memory snapshot, read its entries, split them into samples."""

from __future__ import annotations

import collections
import difflib
import hashlib
import json
import logging
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memdistill.core.errors import UserError

log = logging.getLogger(__name__)

SNAPSHOT_PATTERN = re.compile(r"^memory_(\d+)\.jsonl$")
# The entry types that make samples; any other type stays in the memory as written but is part of no sample's
# observation, action or feedback.
KNOWN_KINDS = ("observation", "action", "feedback")


@dataclass(frozen=True, slots=True)
class MemoryEntry:
    """One line of a snapshot. `type` is kept as written; `kind` is its lower-cased form used for matching."""

    index: int
    type: str
    content: str | dict[str, Any]

    @property
    def kind(self) -> str:
        return self.type.strip().lower()


@dataclass(frozen=True, slots=True)
class Sample:
    """An Observation with the Action and Feedback that follow it before the next Observation.

    `start`/`stop` bound the half-open range of entry indices that belong to the sample: the observation
    through the entry before the next observation (other entry types in between belong to it too).
    """

    sample_idx: int
    observation: MemoryEntry
    action: MemoryEntry | None
    feedback: MemoryEntry | None
    start: int
    stop: int

    @property
    def entry_indices(self) -> range:
        return range(self.start, self.stop)

    @property
    def missing(self) -> list[str]:
        """Which of action/feedback the sample lacks (a checkpoint written mid-step has no feedback yet)."""
        return [name for name, entry in (("action", self.action), ("feedback", self.feedback)) if entry is None]


@dataclass(frozen=True, slots=True)
class Snapshot:
    path: Path
    sha256: str
    entries: tuple[MemoryEntry, ...]
    samples: tuple[Sample, ...]


def _snapshot_id(path: Path) -> int:
    match = SNAPSHOT_PATTERN.match(path.name)
    assert match is not None  # callers only pass names that matched
    return int(match.group(1))


def _snapshots_in(folder: Path) -> dict[str, Path]:
    """Snapshot files by name; a broken symlink is listed too, so choosing it fails loudly."""
    return {
        p.name: p for p in folder.iterdir() if SNAPSHOT_PATTERN.match(p.name) and (p.is_file() or (p.is_symlink() and not p.exists()))
    }


def _usable(path: Path) -> Path:
    if path.is_symlink() and not path.exists():
        raise UserError(f"{path}: broken symlink (points to {os.readlink(path)}); fix or remove it, or name another snapshot")
    return path


def _latest(snapshots: dict[str, Path]) -> Path:
    """The highest numeric id; two names with the same id (memory_100, memory_0100) are ambiguous."""
    newest = max(_snapshot_id(p) for p in snapshots.values())
    tied = sorted(name for name, p in snapshots.items() if _snapshot_id(p) == newest)
    if len(tied) > 1:
        raise UserError(f"{snapshots[tied[0]].parent}: {' and '.join(tied)} have the same id {newest}; remove one or set snapshot to one of them")
    return _usable(snapshots[tied[0]])


def find_snapshot(checkpoint_dir: str | Path, which: str = "latest") -> Path:
    """Return the snapshot file in an episode folder: the highest numeric id, or the named file.

    Ids compare as numbers, so memory_100.jsonl is later than memory_99.jsonl whatever the zero padding.
    """
    folder = Path(checkpoint_dir)
    if not folder.exists():
        raise UserError(f"{folder}: checkpoint folder does not exist (checkpoint_dir)")
    if not folder.is_dir():
        raise UserError(f"{folder}: expected a checkpoint folder, found a file (checkpoint_dir)")
    snapshots = _snapshots_in(folder)
    if not snapshots:
        # A folder of episode checkpoints (ep_000100/, ep_000200/, ...) is the commonest mistake.
        episodes = sorted(
            (p for p in folder.iterdir() if p.is_dir() and _snapshots_in(p)),
            key=lambda p: (int(m.group(1)) if (m := re.search(r"(\d+)$", p.name)) else -1, p.name),
        )
        if episodes:
            raise UserError(
                f"{folder}: holds episode folders ({', '.join(p.name for p in episodes)}), not memory_*.jsonl "
                f"snapshots: point checkpoint_dir at one of them, e.g. {episodes[-1]}"
            )
        raise UserError(
            f"No memory snapshots found in {folder}: point checkpoint_dir at an episode checkpoint such as ep_000200"
        )
    if which == "latest":
        return _latest(snapshots)
    asked = Path(which)
    if asked.parent != Path(".") and asked.parent.resolve() != folder.resolve():
        # Never swap a path for a same-named file elsewhere: the user meant that one file.
        raise UserError(
            f"{which}: snapshot must be a file name inside checkpoint_dir {folder} (such as {sorted(snapshots)[-1]}), not a path elsewhere"
        )
    if asked.name in snapshots:
        return _usable(snapshots[asked.name])
    raise UserError(
        f"{folder}: snapshot '{which}' not found (snapshot); expected 'latest' or one of {', '.join(sorted(snapshots))}"
    )


def parse_entry(raw: Any, index: int, where: str) -> MemoryEntry:
    """Validate one decoded line; `where` is 'file:line' for the error message."""
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected an object with 'type' and 'content', got {type(raw).__name__}")
    if "type" not in raw:
        raise UserError(f"{where}: entry has no 'type' field")
    if "content" not in raw:
        raise UserError(f"{where}: entry has no 'content' field")
    entry_type, content = raw["type"], raw["content"]
    if not isinstance(entry_type, str) or not entry_type.strip():
        raise UserError(f"{where}: 'type' must be a non-empty string")
    if not isinstance(content, (str, dict)):
        raise UserError(f"{where}: 'content' must be a string or an object, got {type(content).__name__}")
    return MemoryEntry(index=index, type=entry_type, content=content)


def json_lines(data: bytes, path: Path) -> Iterator[tuple[int, Any]]:
    """(1-based line number, parsed value) of every non-blank line; errors name `path` and the line."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    # Split on '\n' only: str.splitlines() would also split inside JSON strings holding U+2028 or U+0085,
    # which json.dumps(ensure_ascii=False) writes raw.
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        except RecursionError:
            raise UserError(f"{path}:{lineno}: JSON nested too deeply to read (more than about {sys.getrecursionlimit()} levels)") from None


def warn_unknown_types(path: Path, unknown: dict[str, list[int]], effect: str) -> None:
    """One WARNING naming every entry type that is not Observation/Action/Feedback, how often it occurs
    and its first line, with the known type it was probably meant to be (a typo such as "Obsrevation")."""
    if not unknown:
        return
    described = []
    for name, lines in sorted(unknown.items(), key=lambda item: item[1][0]):
        guess = difflib.get_close_matches(name.strip().lower(), KNOWN_KINDS, n=1, cutoff=0.75)
        hint = f", did you mean {guess[0].capitalize()}?" if guess else ""
        described.append(f"{name!r} x{len(lines)} (first at line {lines[0]}{hint})")
    log.warning(
        "%s: %d entries of a type other than Observation, Action or Feedback (%s); %s",
        path, sum(map(len, unknown.values())), ", ".join(described), effect,
    )


def parse_entries(data: bytes, path: Path) -> tuple[MemoryEntry, ...]:
    """Parse every non-blank line of a snapshot's bytes; errors name `path` and the 1-based line."""
    entries: list[MemoryEntry] = []
    unknown: dict[str, list[int]] = collections.defaultdict(list)
    for lineno, raw in json_lines(data, path):
        entry = parse_entry(raw, len(entries), f"{path}:{lineno}")
        if entry.kind == "observation" and not (entry.content.strip() if isinstance(entry.content, str) else entry.content):
            log.warning("%s:%d: Observation with empty content; the teacher will answer an empty question", path, lineno)
        if entry.kind not in KNOWN_KINDS:
            unknown[entry.type].append(lineno)
        entries.append(entry)
    warn_unknown_types(path, unknown, "they stay in the memory as written but start no sample and are no sample's action or feedback")
    return tuple(entries)


def split_samples(entries: tuple[MemoryEntry, ...]) -> tuple[Sample, ...]:
    """Group entries into samples; entries before the first Observation belong to no sample."""
    starts = [e.index for e in entries if e.kind == "observation"]
    samples = []
    for number, start in enumerate(starts):
        stop = starts[number + 1] if number + 1 < len(starts) else len(entries)
        rest = entries[start + 1 : stop]
        samples.append(
            Sample(
                sample_idx=number,
                observation=entries[start],
                action=next((e for e in rest if e.kind == "action"), None),
                feedback=next((e for e in rest if e.kind == "feedback"), None),
                start=start,
                stop=stop,
            )
        )
    return tuple(samples)


def load_snapshot(path: Path) -> Snapshot:
    data = path.read_bytes()
    entries = parse_entries(data, path)
    samples = split_samples(entries)
    if not samples:
        raise UserError(f"{path}: no Observation entries, so there is nothing to distil")
    return Snapshot(path=path, sha256=hashlib.sha256(data).hexdigest(), entries=entries, samples=samples)


@dataclass(frozen=True, slots=True)
class ExternalObservation:
    """An observation from outside the memory (`observations:` file) and the line it came from."""

    sample: Sample
    line: int


def load_observations(path: str | Path, memory_size: int) -> tuple[ExternalObservation, ...]:
    """Read an observations file: `{"content": ...}` per line, or memory-format entries whose Observations
    are taken (other types skipped). Each becomes a sample with no action or feedback placed after the
    memory's last entry (`start == stop == memory_size`), so it owns no memory entry."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: observations file not found (observations)")
    found: list[ExternalObservation] = []
    unknown: dict[str, list[int]] = collections.defaultdict(list)
    for lineno, raw in json_lines(path.read_bytes(), path):
        if isinstance(raw, dict) and "type" not in raw:
            raw = {"type": "Observation", **raw}
        entry = parse_entry(raw, memory_size, f"{path}:{lineno}")
        if entry.kind not in KNOWN_KINDS:
            unknown[entry.type].append(lineno)
        if entry.kind != "observation":
            continue
        sample = Sample(len(found), entry, None, None, memory_size, memory_size)
        found.append(ExternalObservation(sample, lineno))
    warn_unknown_types(path, unknown, "only Observation entries are read from an observations file, so they were skipped")
    if not found:
        raise UserError(f"{path}: no observations; expected one {{\"content\": ...}} object per line")
    return tuple(found)
