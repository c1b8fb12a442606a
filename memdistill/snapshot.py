"""HistoryAgent checkpoints: find a memory snapshot, read its entries, split them into samples."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memdistill.errors import UserError

SNAPSHOT_PATTERN = re.compile(r"^memory_(\d+)\.jsonl$")
EPISODE_PATTERN = re.compile(r"^ep_\d+$")


@dataclass(frozen=True, slots=True)
class MemoryEntry:
    """One line of a snapshot. `kind` is the lower-cased type used for matching; `type` is kept as written."""

    index: int
    type: str
    content: str | dict[str, Any]

    @property
    def kind(self) -> str:
        return self.type.strip().lower()


@dataclass(frozen=True, slots=True)
class Sample:
    """An Observation with the Action and Feedback that follow it before the next Observation."""

    sample_idx: int
    observation: MemoryEntry
    action: MemoryEntry | None
    feedback: MemoryEntry | None
    entry_indices: tuple[int, ...] = field(default=())
    """Every entry index that belongs to this sample (observation through the entry before the next observation)."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    path: Path
    sha256: str
    entries: tuple[MemoryEntry, ...]
    samples: tuple[Sample, ...]


def find_snapshot(checkpoint_dir: str | Path, which: str = "latest") -> Path:
    """Return the snapshot file in an episode folder: the highest numeric id, or the named file."""
    folder = Path(checkpoint_dir)
    if not folder.exists():
        raise UserError(f"{folder}: checkpoint folder does not exist")
    if not folder.is_dir():
        raise UserError(f"{folder}: expected a checkpoint folder, found a file")
    snapshots = {p.name: p for p in folder.iterdir() if p.is_file() and SNAPSHOT_PATTERN.match(p.name)}
    if not snapshots:
        episodes = sorted(p.name for p in folder.iterdir() if p.is_dir() and EPISODE_PATTERN.match(p.name))
        if episodes:
            raise UserError(
                f"{folder}: holds episode folders ({', '.join(episodes)}), not snapshots: "
                f"point checkpoint_dir at one of them, e.g. {folder / episodes[-1]}"
            )
        raise UserError(
            f"No memory snapshots found in {folder}: point checkpoint_dir at an episode checkpoint such as ep_000200"
        )
    if which == "latest":
        return max(snapshots.values(), key=lambda p: int(SNAPSHOT_PATTERN.match(p.name).group(1)))  # type: ignore[union-attr]
    if which in snapshots:
        return snapshots[which]
    raise UserError(f"{folder}: snapshot '{which}' not found; available: {', '.join(sorted(snapshots))}")


def parse_entry(raw: Any, index: int, where: str) -> MemoryEntry:
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


def read_entries(path: Path) -> tuple[tuple[MemoryEntry, ...], str]:
    """Parse every non-blank line of a snapshot; returns the entries and the file's sha256."""
    data = path.read_bytes()
    entries: list[MemoryEntry] = []
    for lineno, line in enumerate(data.decode("utf-8", errors="strict").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        entries.append(parse_entry(raw, len(entries), f"{path}:{lineno}"))
    return tuple(entries), hashlib.sha256(data).hexdigest()


def split_samples(entries: tuple[MemoryEntry, ...]) -> tuple[Sample, ...]:
    """Group entries into samples; entries before the first Observation belong to no sample."""
    starts = [e.index for e in entries if e.kind == "observation"]
    samples = []
    for number, start in enumerate(starts):
        end = starts[number + 1] if number + 1 < len(starts) else len(entries)
        group = entries[start:end]
        action = next((e for e in group[1:] if e.kind == "action"), None)
        feedback = next((e for e in group[1:] if e.kind == "feedback"), None)
        samples.append(
            Sample(
                sample_idx=number,
                observation=group[0],
                action=action,
                feedback=feedback,
                entry_indices=tuple(e.index for e in group),
            )
        )
    return tuple(samples)


def load_snapshot(path: Path) -> Snapshot:
    try:
        entries, digest = read_entries(path)
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    samples = split_samples(entries)
    if not samples:
        raise UserError(f"{path}: no Observation entries, so there is nothing to distil")
    return Snapshot(path=path, sha256=digest, entries=entries, samples=samples)
