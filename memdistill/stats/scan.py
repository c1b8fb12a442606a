"""The two files stats reads, as lazy polars frames: the intermediate dataset (JSONL, or generate's parquet
form) and the cartridges parquet (one file, a shard directory, or train + validation). Explicit schemas parse
only the fields stats needs; `collect` runs a query with the streaming engine and turns a file polars cannot
read into one line naming it (and, for JSONL, the first bad line)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from memdistill.core import fileio, shards
from memdistill.core.errors import UserError

# Parquet columns whose size grows with the number of kept entries; the rest is the fixed part.
ENTRY_COLUMNS = ("token_idx", "token_id", "logprobs")
ENTRY_COLUMN_PREFIX = "messages.list.element.top_logprobs."

# Only the fields stats reads: scan_ndjson parses nothing else, whatever else a line holds.
METADATA_TYPE = pl.Struct(
    {
        "sample_idx": pl.Int64,
        "finish_reason": pl.String,
        "failed": pl.Boolean,
        "memory_size_chars": pl.Int64,
        "memory_size_entries": pl.Int64,
        "memory_coverage": pl.Float64,
        "teacher": pl.Struct({"model": pl.String, "top_logprobs": pl.Int64, "logprobs": pl.String}),
        # Which observation a row answers (random_sampling gives one several rows), and whether it was cut.
        "observation_idx": pl.Int64,
        "observation_tokens": pl.Int64,
        "observation_tokens_kept": pl.Int64,
    }
)
# The run a dataset comes from (memdistill.stats.report.RunContext), read from the parquet's row metadata.
CONTEXT_TYPE = pl.Struct(
    {
        "strategy": pl.String,
        "strategy_params": pl.Struct(
            {"window_k": pl.Int64, "max_memory_samples": pl.Int64, "subset_size": pl.Int64, "num_subsets": pl.Int64}
        ),
        "checkpoint": pl.String,
        "snapshot": pl.String,
        "snapshot_sha256": pl.String,
        "max_prompt_tokens": pl.Int64,
        "teacher": pl.Struct(
            {"backend": pl.String, "flavor": pl.String, "model": pl.String, "max_tokens": pl.Int64,
             "top_logprobs": pl.Int64, "logprobs": pl.String}
        ),
    }
)
_TOP_TYPE = pl.Struct({"logprob": pl.Float64})
_ITEM_TYPE = pl.Struct({"logprob": pl.Float64, "top_logprobs": pl.List(_TOP_TYPE)})
JSONL_SCHEMA = pl.Schema(
    {
        "messages": pl.List(
            pl.Struct(
                {
                    "role": pl.String,
                    "token_ids": pl.List(pl.Int64),
                    "logprobs": pl.Struct({"content": pl.List(_ITEM_TYPE)}),
                }
            )
        ),
        "metadata": METADATA_TYPE,
    }
)


# A dataset path, or the train and validation files of one dataset read as one (train first: the order
# convert's figures list their records in).
Files = Path | tuple[Path, ...]


def part_paths(paths: Files) -> list[Path]:
    return [part for path in ((paths,) if isinstance(paths, Path) else paths) for part in shards.part_files(path)]


def display_name(paths: Files) -> str:
    return str(paths) if isinstance(paths, Path) else " + ".join(map(str, paths))


def total_bytes(paths: Files) -> int:
    return sum(part.stat().st_size for part in part_paths(paths))


def collect(query: pl.LazyFrame | list[pl.LazyFrame], path: Files, what: str) -> Any:
    """Run the query with the streaming engine; a file polars cannot read is one UserError naming it."""
    path = path if isinstance(path, Path) else path[0]
    try:
        if isinstance(query, list):
            return pl.collect_all(query, engine="streaming")
        return query.collect(engine="streaming")
    except (pl.exceptions.PolarsError, OSError) as exc:
        if path.suffix != ".parquet":
            for part in shards.part_files(path):
                _locate_bad_line(part)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: cannot read it as {what}: {first}") from None


def _locate_bad_line(path: Path) -> None:
    """polars names no line: on the error path only, a plain pass finds the first line that is not
    valid JSON or whose logprobs are not shaped as the intermediate format says, and raises naming it."""
    for lineno, record in fileio.read_jsonl(path, allow_nan=False):
        messages = record.get("messages") if isinstance(record, dict) else None
        if not isinstance(messages, list):
            raise UserError(f"{path}:{lineno}: expected an object with a 'messages' list")
        for number, message in enumerate(messages):
            logprobs = message.get("logprobs") if isinstance(message, dict) else None
            if logprobs is not None and not (isinstance(logprobs, dict) and isinstance(logprobs.get("content"), (list, type(None)))):
                raise UserError(f'{path}:{lineno}: messages[{number}].logprobs must be an object {{"content": [...]}} or null')


def polars_sources(path: Files) -> list[str]:
    """The file, or the parts of a shard directory (of each path, in order), as polars takes them."""
    return [str(part) for part in part_paths(path)]


def is_intermediate_parquet(path: Path) -> bool:
    """A parquet holding generate's records (messages with `logprobs`), not convert's cartridges parquet."""
    first = shards.part_files(path)[0]
    if not fileio.is_parquet(first):
        return False
    messages = pq.read_schema(first).field("messages").type if "messages" in pq.read_schema(first).names else None
    element = getattr(messages, "value_type", None)
    return element is not None and hasattr(element, "get_field_index") and element.get_field_index("logprobs") >= 0


def scan_jsonl(path: Path) -> pl.LazyFrame:
    """The intermediate dataset (JSONL, or generate's parquet form) as a lazy frame with row numbers,
    parsing only the fields stats needs."""
    if is_intermediate_parquet(path):
        # Through JSON, so the stored structs (with more fields) land in the same types as the JSONL's.
        messages = pl.struct("messages").struct.json_encode().str.json_decode(pl.Struct({"messages": JSONL_SCHEMA["messages"]}))
        return pl.scan_parquet(polars_sources(path)).select(
            messages.struct.field("messages"), pl.col("metadata").str.json_decode(METADATA_TYPE)
        ).with_row_index("row")
    return pl.scan_ndjson(polars_sources(path), schema=JSONL_SCHEMA, ignore_errors=False).with_row_index("row")


def scan_parquet(path: Files, metadata_type: pl.Struct = METADATA_TYPE) -> pl.LazyFrame:
    """The cartridges parquet (one file, a shard directory, or train + validation) with row numbers and `metadata`
    as a struct of `metadata_type`'s fields."""
    files = polars_sources(path)
    try:
        frame = pl.scan_parquet(files)
        schema = frame.collect_schema()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise UserError(f"{path}: not a readable parquet file ({str(exc).splitlines()[0]})") from None
    if "messages" not in schema:
        raise UserError(f"{path}: no 'messages' column; expected a cartridges parquet")
    stored = schema.get("metadata")
    if stored == pl.String:
        metadata = pl.col("metadata").str.json_decode(metadata_type)
    elif isinstance(stored, pl.Struct) and {"json", "finish_reason"} <= {f.name for f in stored.fields}:
        # convert's struct: the whole record metadata is its `json` field; `finish_reason` is the effective one.
        decoded = pl.col("metadata").struct.field("json").str.json_decode(metadata_type)
        metadata = pl.struct(
            [pl.col("metadata").struct.field("finish_reason") if name == "finish_reason" else decoded.struct.field(name)
             for name in metadata_type.to_schema()]
        )
    elif "metadata" in schema:
        # A struct written by another tool may have other fields; going through JSON picks ours.
        metadata = pl.col("metadata").struct.json_encode().str.json_decode(metadata_type)
    else:
        metadata = pl.lit(None, dtype=metadata_type)
    return frame.select("messages", metadata.alias("metadata")).with_row_index("row")
