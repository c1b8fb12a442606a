"""The held-out split: whole observations to validation, by a hash of the observation's content and a seed.

A row's observation is the text of its last user message: the observation itself under the default student
view, or the teacher prompt under `student_view: teacher`, whose observation is what follows the last
"Here is the current observation:" marker (the observation is the prompt's last part, so that suffix is a
function of the observation alone, whatever the memory before it holds). Every row of one observation
(several memory views under random_sampling, the same observation in several snapshots) gets the same
digest, so the same split. The split is a hash, not a shuffle: adding rows never moves an existing one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memdistill.snapshots.prompts import CURRENT_HEADER

_OBSERVATION_MARKER = f"\n\n{CURRENT_HEADER}\n\n"
# 64 bits of the seeded digest, read as a number in [0, 1): validation when below the fraction.
_SCALE = float(1 << 64)


def validation_path(output: Path) -> Path:
    """Where held-out rows go when no path is named: `dataset.parquet` -> `dataset.validation.parquet` (stats
    looks there too)."""
    return output.with_name(f"{output.stem}.validation{output.suffix or '.parquet'}")


def observation_text(user_content: str) -> str:
    """The observation a user message asks about (see the module docstring)."""
    # The same rule for every message (not only ones that look like a teacher prompt): an observation that
    # itself holds the marker then gives the same suffix under both views.
    return user_content.rpartition(_OBSERVATION_MARKER)[2]


def observation_digest(messages: Sequence[Any]) -> bytes:
    """sha256 of the observation of a row's messages (objects with `role` and `content`); of "" without a user message."""
    user = next((m.content for m in reversed(messages) if m.role == "user"), "")
    return hashlib.sha256(observation_text(user or "").encode("utf-8")).digest()


def in_validation(digest: bytes, fraction: float, seed: int) -> bool:
    """Whether the observation with this digest is held out: a pure function of the digest, fraction and seed."""
    if fraction <= 0.0:
        return False
    seeded = hashlib.sha256(seed.to_bytes(8, "little", signed=True) + digest).digest()
    return int.from_bytes(seeded[:8], "big") / _SCALE < fraction


@dataclass
class SplitCounts:
    """Rows and distinct observations per split, for the whole output (merged over shards)."""

    train_rows: int = 0
    validation_rows: int = 0
    train_observations: set[bytes] = field(default_factory=set)
    validation_observations: set[bytes] = field(default_factory=set)

    def add(self, digest: bytes, validation: bool) -> None:
        if validation:
            self.validation_rows += 1
            self.validation_observations.add(digest)
        else:
            self.train_rows += 1
            self.train_observations.add(digest)

    def merge(self, other: "SplitCounts") -> None:
        self.train_rows += other.train_rows
        self.validation_rows += other.validation_rows
        self.train_observations |= other.train_observations
        self.validation_observations |= other.validation_observations

    @property
    def observations(self) -> int:
        return len(self.train_observations | self.validation_observations)


def too_small(counts: SplitCounts, fraction: float) -> str | None:
    """Why the split must keep everything in train (one line), or None when it stands.

    Fewer observations than one expected in validation, or a hash that happened to leave either split
    empty: a validation set of nothing (or a train set of nothing) is no held-out evaluation.
    """
    if fraction <= 0.0:
        return None
    observations = counts.observations
    if observations * fraction < 1.0:
        return (f"{observations} observation(s) are too few for validation_fraction {fraction} (fewer than one expected "
                f"in validation); every row stays in train")
    if not counts.validation_observations or not counts.train_observations:
        empty = "validation" if not counts.validation_observations else "train"
        return (f"validation_fraction {fraction} over {observations} observation(s) left {empty} empty; every row stays "
                f"in train (more samples, or another validation_seed, give a split)")
    return None
