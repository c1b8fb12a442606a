"""generate's `output_format: parquet`: the intermediate dataset as parquet, the same fields as a JSONL line.

Columns `messages` (role, content, token_ids, logprobs.content[] with token, logprob, token_id, bytes and
top_logprobs[]), `system_prompt`, `metadata` (JSON text: free-form, as in the JSONL) and `type`. convert
(`iter_parquet`), stats and inspect read it wherever they read the JSONL.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

ENTRY_FIELDS = [
    ("token", pa.string()),
    ("logprob", pa.float64()),
    ("token_id", pa.int64()),
    ("bytes", pa.list_(pa.int64())),
]
ITEM = pa.struct([*ENTRY_FIELDS, ("top_logprobs", pa.list_(pa.struct(ENTRY_FIELDS)))])
MESSAGE = pa.struct([
    ("role", pa.string()),
    ("content", pa.string()),
    ("token_ids", pa.list_(pa.int64())),
    ("logprobs", pa.struct([("content", pa.list_(ITEM))])),
])
SCHEMA = pa.schema([
    ("messages", pa.list_(MESSAGE)),
    ("system_prompt", pa.string()),
    ("metadata", pa.string()),
    ("type", pa.string()),
])
ROWS_PER_GROUP = 256


def records_to_table(records: list[dict[str, Any]]) -> pa.Table:
    """Records of the intermediate format as one table (metadata kept as JSON text)."""
    rows = [{**record, "metadata": json.dumps(record.get("metadata", {}), ensure_ascii=False)} for record in records]
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def write_intermediate_parquet(path: Path, records: Iterable[dict[str, Any]], rows_per_group: int = ROWS_PER_GROUP) -> None:
    """Write records to `path` (a new file: callers give a temporary path and rename it) one row group at a time."""
    iterator = iter(records)
    with pq.ParquetWriter(str(path), SCHEMA, compression="zstd") as writer:
        while batch := list(itertools.islice(iterator, rows_per_group)):
            writer.write_table(records_to_table(batch))
