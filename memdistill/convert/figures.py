"""Figures convert counts while the data is parsed anyway, written beside the parquet for `stats`.

`stats` needs per token what other `min_prob_mass` values would keep (the mass curve), and per record
how many tokens, kept entries and unmapped ids the parquet holds. Counting them where convert already
holds each message's dense [T, K] top-k is a few numpy calls per message; counting them in `stats`
meant parsing the whole JSONL a second time. The side output (`<output stem>.figures.json`, a small JSON
object: one number per threshold, one per record) is what `stats` reads instead.

What is counted follows stats' definitions, so `stats` gives the same figures either way (except a
probability sitting exactly on a threshold: the figures decide on the float32 values convert stores):
- the curve (`kept_at`, `rows_below`, `tokens_with_logprobs`, `recorded_entries`) is over the top-K the
  teacher recorded, before convert appends an end-of-turn row (stats anchors the curve to the parquet);
- the kept figures (`kept_histogram`, `mass_kept`, `unmapped_ids`, `tokens_per_row`) are over the rows
  actually written.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from memdistill.convert.cartridges_io import OutRow
from memdistill.convert.mass import MISSING_ID
from memdistill.core import fileio, shards
from memdistill.core.errors import UserError

FIGURES_FORMAT = "memdistill.convert_figures/1"
# params.yaml's stats.mass_thresholds when none is given (convert.min_prob_mass is always added).
DEFAULT_MASS_THRESHOLDS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99, 0.995, 0.999)


def figures_path(output: Path) -> Path:
    """Where convert writes its figures for an output parquet: `data/dataset.parquet` -> `data/dataset.figures.json`."""
    return output.with_name(output.stem + ".figures.json")


def mass_curve_counts(logprobs: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For dense [T, K] logprobs (any order, non-finite = padding) and H thresholds: per threshold, the
    entries convert's rule keeps summed over the rows (shortest sorted prefix reaching it, all when never
    reached), and the rows whose whole recorded mass stays below it. Decides on float32 values, as
    `flatten_by_mass` does, so the count at convert's own threshold is exactly what it keeps."""
    kept, never = mass_curve_row_counts(logprobs, thresholds)
    return kept.sum(axis=0, dtype=np.int64), never.sum(axis=0, dtype=np.int64)


def mass_curve_row_counts(logprobs: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`mass_curve_counts` per row: [T, H] entries kept and [T, H] whether the row's recorded mass stays
    below each threshold; summed over rows they are mass_curve_counts' figures (same float32 decisions).
    A block of messages padded to one K gives each row what its own message's [T, K] gives it."""
    thresholds = np.asarray(thresholds, dtype=np.float64)
    clean = np.where(np.isfinite(logprobs), logprobs, -np.inf).astype(np.float32)
    ordered = -np.sort(-clean, axis=1)
    T, K = ordered.shape
    cumulative = np.cumsum(np.exp(ordered.astype(np.float64)), axis=1)
    available = np.isfinite(ordered).sum(axis=1)
    mass = cumulative[:, -1] if K else np.zeros(T)
    never = mass[:, None] < thresholds[None, :]
    below_count = np.stack([np.count_nonzero(cumulative < t, axis=1) for t in thresholds], axis=1) if K else np.zeros((T, thresholds.size), dtype=np.int64)
    kept = np.where(never, available[:, None], below_count + 1)
    return kept.astype(np.int64), never


@dataclass
class ConvertFigures:
    """The side output's content; plain numbers and lists, so it round-trips through JSON unchanged."""

    min_prob_mass: float
    thresholds: list[float]
    input_bytes: int = 0  # sizes of the input and the parquet written: tell a stale figures file from its files
    parquet_bytes: int = 0
    rows: int = 0
    kept_at: list[int] = field(default_factory=list)  # entries kept at each threshold (recorded top-K)
    rows_below: list[int] = field(default_factory=list)  # token rows whose recorded mass stays below it
    tokens_with_logprobs: int = 0
    recorded_entries: int = 0
    recorded_top_k: int = 0
    tokens_per_row: list[int] = field(default_factory=list)  # assistant tokens written, per record
    recorded_tokens_per_row: list[int] = field(default_factory=list)  # assistant tokens in the input, per record
    top_k: int = 0  # K of the parquet's top_logprobs shape
    kept_entries: int = 0
    kept_histogram: dict[str, int] = field(default_factory=dict)  # entries kept -> assistant tokens
    mass_kept_sum: float = 0.0  # summed over the tokens with at least one kept entry
    tokens_with_entries: int = 0
    unmapped_chosen: int = 0  # -1 among the chosen assistant ids
    unmapped_kept: int = 0  # -1 among the kept entries
    rejected_rows: int = 0
    left_out_low_gain: list[int] = field(default_factory=list)  # sample_idx of the rows below convert.min_memory_gain

    def to_json(self) -> str:
        return json.dumps({"format": FIGURES_FORMAT, **asdict(self)}, separators=(",", ":")) + "\n"


@dataclass(slots=True)
class RecordCounts:
    """The curve counts of one record's recorded top-k, waiting for the record to be written."""

    kept: np.ndarray  # int64 [H]
    below: np.ndarray  # int64 [H]
    tokens: int = 0
    recorded: int = 0
    top_k: int = 0


class FiguresCollector:
    """Counts a convert run: `add_token_rows` per assistant message (the recorded dense top-k) or
    `add_counts` for messages counted elsewhere, `drop_row` for a record not written, `add_row` for a
    record written (commits the counts added since the previous record ended)."""

    def __init__(self, min_prob_mass: float, thresholds: Sequence[float]) -> None:
        values = sorted({float(t) for t in (*thresholds, min_prob_mass)})
        if not all(0.0 < t <= 1.0 for t in values):
            raise UserError(f"mass_thresholds: every mass threshold must be in (0, 1], got {list(thresholds)}")
        self.thresholds = np.asarray(values, dtype=np.float64)
        self.figures = ConvertFigures(float(min_prob_mass), values, kept_at=[0] * len(values), rows_below=[0] * len(values))
        self._histogram = np.zeros(0, dtype=np.int64)
        self._open = self._empty()

    def _empty(self) -> RecordCounts:
        return RecordCounts(np.zeros(self.thresholds.size, dtype=np.int64), np.zeros(self.thresholds.size, dtype=np.int64))

    def add_token_rows(self, logprobs: np.ndarray) -> None:
        """One assistant message's recorded top-k as a dense [T, K] array (-inf where nothing was recorded)."""
        kept, below = mass_curve_counts(logprobs, self.thresholds)
        valid = np.isfinite(logprobs)
        top_k = int(valid.sum(axis=1).max()) if valid.size else 0
        self.add_counts(kept, below, int(logprobs.shape[0]), int(valid.sum()), top_k)

    def add_counts(self, kept: np.ndarray, below: np.ndarray, tokens: int, recorded: int, top_k: int) -> None:
        """Counts of assistant messages counted elsewhere (convert's block path), into the open record."""
        record = self._open
        record.kept += kept
        record.below += below
        record.tokens += tokens
        record.recorded += recorded
        record.top_k = max(record.top_k, top_k)

    def drop_row(self) -> None:
        """The record whose messages were just added is not written (rejected): forget its counts."""
        self._open = self._empty()
        self.figures.rejected_rows += 1

    def leave_out(self, sample_idx: int | None) -> None:
        """The record just converted is below convert.min_memory_gain: forget its counts, list it."""
        self._open = self._empty()
        self.figures.left_out_low_gain.append(-1 if sample_idx is None else sample_idx)

    def add_row(self, row: OutRow) -> None:
        """A record written to the parquet: commit its curve counts and count what it holds."""
        f = self.figures
        record, self._open = self._open, self._empty()
        f.kept_at = [a + int(b) for a, b in zip(f.kept_at, record.kept)]
        f.rows_below = [a + int(b) for a, b in zip(f.rows_below, record.below)]
        f.tokens_with_logprobs += record.tokens
        f.recorded_entries += record.recorded
        f.recorded_top_k = max(f.recorded_top_k, record.top_k)
        tokens = bare = 0
        for message in row.messages:
            if message.role != "assistant":
                continue
            tokens += int(message.token_ids.size)
            f.unmapped_chosen += int((message.token_ids == MISSING_ID).sum())
            top = message.top
            if top is None:
                bare += int(message.token_ids.size)
                continue
            T = int(top.shape[0])
            f.top_k = max(f.top_k, int(top.shape[1]))
            per_token = np.bincount(top.token_idx, minlength=T)[:T]
            mass = np.bincount(top.token_idx, weights=np.exp(top.logprobs.astype(np.float64)), minlength=T)[:T]
            has_entries = per_token > 0
            f.kept_entries += int(top.token_id.size)
            f.unmapped_kept += int((top.token_id == MISSING_ID).sum())
            f.mass_kept_sum += float(mass[has_entries].sum())
            f.tokens_with_entries += int(has_entries.sum())
            counts = np.bincount(per_token[has_entries])  # tokens with none: stats counts them (bar 0)
            if counts.size > self._histogram.size:
                self._histogram = np.pad(self._histogram, (0, counts.size - self._histogram.size))
            self._histogram[: counts.size] += counts
        f.tokens_per_row.append(tokens)
        f.recorded_tokens_per_row.append(record.tokens + bare)
        f.rows += 1

    def finish(self, input_path: Path, *outputs: Path) -> ConvertFigures:
        """The figures, sized against the input and every output (train and validation files)."""
        self.figures.input_bytes = input_path.stat().st_size
        self.figures.parquet_bytes = sum(shards.total_bytes(output) for output in outputs)
        self.figures.kept_histogram = {str(k): int(n) for k, n in enumerate(self._histogram) if n and k}
        return self.figures


def held_out_last(figures: ConvertFigures, held_rows: np.ndarray) -> None:
    """Order the per-record lists as stats reads the rows: the train file's, then the validation file's
    (`held_rows`: per record in input order, whether it went to validation)."""
    order = np.concatenate([np.flatnonzero(~held_rows), np.flatnonzero(held_rows)])
    figures.tokens_per_row = [figures.tokens_per_row[i] for i in order]
    figures.recorded_tokens_per_row = [figures.recorded_tokens_per_row[i] for i in order]


def write_figures(path: Path, figures: ConvertFigures) -> None:
    with fileio.atomic_output(path) as handle:
        handle.write(figures.to_json())


def read_figures(path: Path) -> ConvertFigures:
    """The side output convert wrote; a file of another shape is one UserError naming it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); re-run convert") from None
    if not isinstance(data, dict) or data.pop("format", None) != FIGURES_FORMAT:
        raise UserError(f"{path}: expected convert's figures ({FIGURES_FORMAT}); re-run convert")
    try:
        return ConvertFigures(**data)
    except TypeError as exc:
        raise UserError(f"{path}: {exc}; re-run convert") from None
