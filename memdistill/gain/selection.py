"""Selection in convert by memory gain: each row's metadata carries its gain; convert.min_memory_gain leaves
out the samples below it (a sample the gain stage could not measure is kept: no number, no verdict)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from memdistill.core.errors import UserError
from memdistill.gain.gain_file import read_gains


@dataclass(frozen=True, slots=True)
class GainSelection:
    path: Path
    gains: dict[int, float | None]
    min_memory_gain: float | None = None

    @classmethod
    def load(cls, path: Path, min_memory_gain: float | None) -> "GainSelection":
        return cls(path, read_gains(path), min_memory_gain)

    def gain_of(self, sample_idx: int | None, where: str) -> float | None:
        if sample_idx not in self.gains:
            raise UserError(f"{where}: sample {sample_idx} has no entry in {self.path}; the gain file is from another "
                            f"dataset: run the gain stage again (dvc repro)")
        return self.gains[sample_idx]

    def keeps(self, gain: float | None) -> bool:
        return self.min_memory_gain is None or gain is None or gain >= self.min_memory_gain
