"""The cartridges parquet format: schema and a streaming row-group writer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

TOP_LOGPROBS_TYPE = pa.struct(
    [
        ("token_idx", pa.list_(pa.int64())),
        ("token_id", pa.list_(pa.int64())),
        ("logprobs", pa.list_(pa.float32())),
        ("shape", pa.list_(pa.int64())),
    ]
)
MESSAGE_TYPE = pa.struct(
    [
        ("content", pa.string()),
        ("role", pa.string()),
        ("token_ids", pa.list_(pa.int64())),
        ("top_logprobs", TOP_LOGPROBS_TYPE),
    ]
)
# Where a row comes from (memdistill.core.lineage builds it from the record's metadata): digests are sha256 hex
# prefixes; null where the record does not say (a seed-format file, a server that does not tell its weights).
LINEAGE_TYPE = pa.struct(
    [
        ("snapshot", pa.string()),
        ("snapshot_sha256", pa.string()),
        ("teacher_model", pa.string()),
        ("teacher_weights", pa.string()),  # "sha256:<prefix>" of the weights file, or "revision:<commit>"
        ("teacher_backend", pa.string()),
        ("teacher_flavor", pa.string()),
        ("chat_template_sha256", pa.string()),
        ("strategy", pa.string()),
        ("strategy_params", pa.string()),  # JSON object, keys sorted
        ("memdistill_version", pa.string()),
    ]
)
# A struct, as cartridges' own writer stores a metadata dict (its viewer fails on a string). The typed
# fields are what tools filter on; `json` holds the record's whole free-form metadata object.
METADATA_TYPE = pa.struct(
    [
        ("sample_idx", pa.int64()),
        ("finish_reason", pa.string()),  # "stop" also when the last token is end-of-turn but the server said "length"
        ("logprobs", pa.string()),  # raw | tempered, as generate recorded it (null: not recorded)
        ("eot_appended", pa.bool_()),  # convert appended an end-of-turn token the logprobs omitted
        ("memory_gain", pa.float64()),  # the sample's memory gain, nats/token (data/gain.parquet; null: not measured)
        ("json", pa.string()),
        ("lineage", LINEAGE_TYPE),
    ]
)
SCHEMA = pa.schema(
    [
        ("messages", pa.list_(MESSAGE_TYPE)),
        ("system_prompt", pa.string()),
        ("metadata", METADATA_TYPE),
        ("type", pa.string()),
    ]
)


DICTIONARY_COLUMNS = ["messages.list.element.content", "messages.list.element.role", "system_prompt", "metadata.finish_reason",
                      "metadata.logprobs", "metadata.json", "type", *(f"metadata.lineage.{name}" for name in LINEAGE_TYPE.names)]
TOKEN_IDX_COLUMN = "messages.list.element.top_logprobs.token_idx.list.element"


@dataclass(slots=True)
class OutMessage:
    role: str
    content: str
    token_ids: np.ndarray  # int64
    top: "OutTop | None" = None


@dataclass(slots=True)
class OutTop:
    token_idx: np.ndarray  # int64 [N]
    token_id: np.ndarray  # int64 [N]
    logprobs: np.ndarray  # float32 [N]
    shape: tuple[int, int]


@dataclass(frozen=True, slots=True)
class RowMetadata:
    sample_idx: int | None
    finish_reason: str | None
    logprobs: str | None
    eot_appended: bool
    json: str
    lineage: dict[str, str | None] | None = None  # LINEAGE_TYPE's fields
    memory_gain: float | None = None


@dataclass(slots=True)
class OutRow:
    messages: list[OutMessage]
    system_prompt: str
    metadata: RowMetadata
    type: str
    observation: bytes = b""  # sha256 of the row's observation (memdistill.convert.split), not written: it picks the split


def _offsets(lengths: list[int]) -> pa.Array:
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    # list<> offsets are int32 (what cartridges' pandas reader gets); a row group never nears 2^31 entries
    # at sane rows_per_group, but fail loudly rather than wrap around.
    if offsets[-1] > np.iinfo(np.int32).max:
        raise ValueError(f"a row group holds {offsets[-1]} list entries, more than int32 offsets allow; lower rows_per_group")
    return pa.array(offsets.astype(np.int32), type=pa.int32())


def _list_of(arrays: list[np.ndarray], value_type: pa.DataType) -> pa.Array:
    values = np.concatenate(arrays) if arrays else np.array([], dtype=value_type.to_pandas_dtype())
    return pa.ListArray.from_arrays(_offsets([len(a) for a in arrays]), pa.array(values, type=value_type))


def rows_to_table(rows: list[OutRow]) -> pa.Table:
    """Build the columns from flat numpy buffers and offsets; no per-token Python objects."""
    messages = [m for row in rows for m in row.messages]
    # One struct slot per message: messages without logprobs get empty lists under a null mask, so no
    # gather/copy of the logprob buffers is needed.
    empty_i64 = np.empty(0, dtype=np.int64)
    empty_f32 = np.empty(0, dtype=np.float32)
    tops = [m.top for m in messages]
    has_top = np.array([t is not None for t in tops], dtype=bool)
    spread = pa.StructArray.from_arrays(
        [
            _list_of([t.token_idx if t is not None else empty_i64 for t in tops], pa.int64()),
            _list_of([t.token_id if t is not None else empty_i64 for t in tops], pa.int64()),
            _list_of([t.logprobs if t is not None else empty_f32 for t in tops], pa.float32()),
            _list_of([np.asarray(t.shape, dtype=np.int64) if t is not None else empty_i64 for t in tops], pa.int64()),
        ],
        fields=list(TOP_LOGPROBS_TYPE),
        mask=pa.array(~has_top),
    )
    message_struct = pa.StructArray.from_arrays(
        [
            pa.array([m.content for m in messages], type=pa.string()),
            pa.array([m.role for m in messages], type=pa.string()),
            _list_of([m.token_ids for m in messages], pa.int64()),
            spread,
        ],
        fields=list(MESSAGE_TYPE),
    )
    messages_column = pa.ListArray.from_arrays(_offsets([len(r.messages) for r in rows]), message_struct)
    return pa.Table.from_arrays(
        [
            messages_column,
            pa.array([r.system_prompt for r in rows], type=pa.string()),
            pa.array([{name: getattr(r.metadata, name) for name in METADATA_TYPE.names} for r in rows], type=METADATA_TYPE),
            pa.array([r.type for r in rows], type=pa.string()),
        ],
        schema=SCHEMA,
    )


class CartridgesWriter:
    """Streams rows into a parquet file in row groups, so memory stays bounded by one group."""

    def __init__(self, path: Path, rows_per_group: int = 256, compression: str = "zstd") -> None:
        self.rows_per_group = rows_per_group
        self._writer = pq.ParquetWriter(
            str(path), SCHEMA, compression=compression,
            # Dictionaries pay off only for the repetitive text columns; ids and logprobs are high-cardinality.
            use_dictionary=DICTIONARY_COLUMNS,
            # token_idx is sorted runs (0,0,0,1,1,2,...): delta encoding stores it in a few bits per entry.
            column_encoding={TOKEN_IDX_COLUMN: "DELTA_BINARY_PACKED"},
        )
        self._pending: list[OutRow] = []

    def write(self, row: OutRow) -> None:
        self._pending.append(row)
        if len(self._pending) >= self.rows_per_group:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self._writer.write_table(rows_to_table(self._pending))
            self._pending = []

    def write_table(self, table: pa.Table) -> None:
        """Rows already in the cartridges schema (a rewrite), in the row groups `write` would have made."""
        self.flush()
        self._writer.write_table(table, row_group_size=self.rows_per_group)

    def set_footer(self, key: str, value: str) -> None:
        """Key-value metadata in the parquet footer (pandas and cartridges ignore it; tools can read it)."""
        self._writer.add_key_value_metadata({key: value})

    def abort(self) -> None:
        """Close after a failure without raising again (a full disk makes close fail too); the caller
        discards the file and re-raises the original error."""
        self._pending = []
        try:
            self._writer.close()
        except Exception:  # noqa: BLE001 - the first error is the one worth reporting
            pass

    def close(self) -> None:
        self.flush()
        self._writer.close()


def rejoin(train: Path, held: Path, held_rows: np.ndarray, rows_per_group: int) -> None:
    """Put the rows of `held` back among those of `train` in input order and leave `held` empty (the footers
    stay). `held_rows` says, per row of the input order, whether it went to `held`. For a split that must not
    stand (too few observations), so both files are small."""
    footer = {k.decode(): v.decode() for k, v in (pq.ParquetFile(train).metadata.metadata or {}).items() if k.startswith(b"memdistill.")}
    both = pa.concat_tables([pq.read_table(train, schema=SCHEMA), pq.read_table(held, schema=SCHEMA)])
    positions = np.concatenate([np.flatnonzero(~held_rows), np.flatnonzero(held_rows)])
    merged = both.take(pa.array(np.argsort(positions, kind="stable")))
    for path, table in ((train, merged), (held, merged.slice(0, 0))):
        writer = CartridgesWriter(path, rows_per_group)
        writer.write_table(table)
        for key, value in footer.items():
            writer.set_footer(key, value)
        writer.close()
