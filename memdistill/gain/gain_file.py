"""data/gain.parquet: one row per dataset sample (a shard directory of parts when the dataset is one).

Columns: key (the sample's sample_idx), status (measured | empty | rejected | not_measured), gain (mean
G_t, nats/token; null unless measured), top1_agreement, n_tokens, missing_entries (teacher entries scored
with the engine's bound), token_ids (the scored completion: the parquet's assistant token ids),
token_gains (G_t per token), logq_chosen (log q_without_memory of the chosen token). The footer key
`memdistill.gain` holds the run's summary (engine, counts, why not measured).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from memdistill.core import shards
from memdistill.core.errors import UserError

FOOTER_KEY = "memdistill.gain"
STATUSES = ("measured", "empty", "rejected", "not_measured")
SCHEMA = pa.schema([
    ("key", pa.int64()),
    ("status", pa.string()),
    ("gain", pa.float64()),
    ("top1_agreement", pa.float64()),
    ("n_tokens", pa.int64()),
    ("missing_entries", pa.int64()),
    ("token_ids", pa.list_(pa.int64())),
    ("token_gains", pa.list_(pa.float64())),
    ("logq_chosen", pa.list_(pa.float64())),
])


@dataclass(slots=True)
class GainRow:
    key: int
    status: str
    gain: float | None = None
    top1_agreement: float | None = None
    n_tokens: int = 0
    missing_entries: int = 0
    token_ids: list[int] = field(default_factory=list)
    token_gains: list[float] = field(default_factory=list)
    logq_chosen: list[float] = field(default_factory=list)


@dataclass
class GainSummary:
    """What the stage did, counted; logged and stored in the footer (no timings: the same inputs write the
    same bytes)."""

    engine: dict[str, Any] = field(default_factory=dict)
    not_measured: str | None = None  # why, when no engine scored the dataset
    samples: int = 0
    measured: int = 0
    empty: int = 0
    rejected: int = 0
    missing_entries: int = 0
    scored_tokens: int = 0

    def count(self, row: GainRow) -> None:
        self.samples += 1
        if row.status in ("measured", "empty", "rejected"):
            setattr(self, row.status, getattr(self, row.status) + 1)
        self.missing_entries += row.missing_entries
        if row.status == "measured":
            self.scored_tokens += row.n_tokens

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class GainWriter:
    """Streams rows into one parquet file in row groups."""

    def __init__(self, path: Path, rows_per_group: int = 256) -> None:
        self.rows_per_group = rows_per_group
        self._writer = pq.ParquetWriter(str(path), SCHEMA, compression="zstd")
        self._pending: list[GainRow] = []

    def write(self, row: GainRow) -> None:
        self._pending.append(row)
        if len(self._pending) >= self.rows_per_group:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            columns = {name: [getattr(row, name) for row in self._pending] for name in SCHEMA.names}
            self._writer.write_table(pa.Table.from_pydict(columns, schema=SCHEMA))
            self._pending = []

    def close(self, summary: GainSummary) -> None:
        self.flush()
        self._writer.add_key_value_metadata({FOOTER_KEY: json.dumps(summary.to_dict())})
        self._writer.close()

    def abort(self) -> None:
        self._pending = []
        try:
            self._writer.close()
        except Exception:  # noqa: BLE001 - the first error is the one worth reporting
            pass


def read_table(path: Path, columns: list[str] | None = None) -> pa.Table:
    """The whole gain file (every part of a shard directory, in order)."""
    try:
        tables = [pq.read_table(part, columns=columns) for part in shards.part_files(path)]
    except (pa.ArrowException, OSError) as exc:
        raise UserError(f"{path}: not a gain parquet ({str(exc).splitlines()[0]}); run the gain stage again") from None
    missing = [name for name in (columns or ["key", "status", "gain"]) if name not in tables[0].schema.names]
    if missing:
        raise UserError(f"{path}: not a gain parquet (no column {missing[0]}); run the gain stage again")
    return pa.concat_tables(tables)


def read_gains(path: Path) -> dict[int, float | None]:
    """key -> sample gain (None unless measured)."""
    table = read_table(path, ["key", "status", "gain"])
    keys = table.column("key").to_pylist()
    gains = table.column("gain").to_pylist()
    return dict(zip(keys, gains))


def token_gains_of(path: Path, key: Any) -> list[float]:
    """One sample's G_t per assistant token (for `memdistill inspect --gain`); a sample the file does not
    measure is one UserError."""
    for row in read_table(path, ["key", "status", "token_gains"]).to_pylist():
        if row["key"] == key:
            if row["status"] != "measured":
                raise UserError(f"{path}: sample {key} has no memory gain (status {row['status']})")
            return row["token_gains"]
    raise UserError(f"{path}: no sample {key}; the gain file is from another dataset (run the gain stage again)")


def read_summary(path: Path) -> dict[str, Any]:
    """The footer summary of the first part (every part carries the whole run's)."""
    metadata = pq.ParquetFile(shards.part_files(path)[0]).metadata.metadata or {}
    raw = metadata.get(FOOTER_KEY.encode())
    return json.loads(raw) if raw else {}
