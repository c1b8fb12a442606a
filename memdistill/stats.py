"""Dataset statistics with polars: figures for DVC metrics, data for DVC plots, a readable summary.

Everything is a lazy polars query over the files (explicit schemas, list expressions, streaming
collection), so a multi-gigabyte JSONL or parquet is never held whole and no Python loop runs over
tokens. Two sources, each for what only it knows:

- the parquet (what training sees): tokens, kept entries, kept mass, unmapped ids, bytes per entry;
- the JSONL (the full recorded top-K): the mass curve, i.e. what any other `min_prob_mass` would keep.
"""

from __future__ import annotations

import collections

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from memdistill import fileio, shards
from memdistill.convert_figures import DEFAULT_MASS_THRESHOLDS, read_figures
from memdistill.errors import UserError
from memdistill.gain.report import GainReport, empty_report, gain_report
from memdistill.gain.report import summary_lines as gain_summary_lines
from memdistill.logprobs import MISSING_ID

log = logging.getLogger(__name__)

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
SAMPLE_COLUMNS = ("row", "sample", "tokens", "finish_reason", "failed", "memory_size_chars", "memory_size_entries", "memory_coverage")
# A sample that kept less than this share of the memory its strategy wanted counts as poorly covered.
LOW_COVERAGE = 0.5


@dataclass(frozen=True, slots=True)
class ParquetFigures:
    samples: pl.DataFrame  # SAMPLE_COLUMNS + unmapped_chosen, one row per record
    top_k: int
    kept_entries: int
    unmapped_chosen: int
    unmapped_kept: int
    mean_mass_kept: float
    kept_histogram: pl.DataFrame  # kept, tokens
    file_bytes: int
    entry_bytes: int  # compressed bytes of the kept-entry columns

    @property
    def assistant_tokens(self) -> int:
        return int(self.samples["tokens"].sum())

    @property
    def unmapped(self) -> int:
        return self.unmapped_chosen + self.unmapped_kept


@dataclass(frozen=True, slots=True)
class JsonlFigures:
    samples: pl.DataFrame  # SAMPLE_COLUMNS, one row per record
    tokens_with_logprobs: int
    recorded_entries: int  # top-K entries recorded, before any sparsification
    top_k: int
    mass_curve: pl.DataFrame  # threshold, kept_entries, mean_kept_per_token, share_rows_below
    file_bytes: int


@dataclass(frozen=True, slots=True)
class StatsResult:
    metrics: dict[str, Any]
    plots: dict[str, pl.DataFrame]
    samples: pl.DataFrame  # per record: sample, tokens, finish_reason, memory sizes
    # metrics/generate.json, shown in the summary; not repeated in metrics/stats.json (`dvc metrics show` lists both)
    generation: dict[str, Any] = field(default_factory=dict)
    memory_gain: GainReport | None = None  # from the gain stage's file (memdistill/gain/report.py)


# ---------------------------------------------------------------------------------------------- queries


def _assistant_messages(frame: pl.LazyFrame) -> pl.LazyFrame:
    """One row per assistant message of the parquet, its record number in `row`."""
    return (
        frame.select("row", "messages")
        .explode("messages")
        .unnest("messages")
        .filter(pl.col("role") == "assistant")
    )


def _parquet_samples(frame: pl.LazyFrame) -> pl.LazyFrame:
    """One row per parquet record: SAMPLE_COLUMNS plus the -1 ids among its chosen assistant tokens."""
    per_record = (
        _assistant_messages(frame)
        .group_by("row")
        .agg(
            pl.col("token_ids").list.len().sum().alias("tokens"),
            pl.col("token_ids").list.count_matches(MISSING_ID).sum().cast(pl.Int64).alias("unmapped_chosen"),
        )
    )
    joined = frame.select("row", "metadata").join(per_record, on="row", how="left").sort("row")
    return pl.concat(
        [_sample_columns(joined), joined.select(pl.col("unmapped_chosen").fill_null(0))], how="horizontal"
    )


def _collect(query: pl.LazyFrame | list[pl.LazyFrame], path: Path, what: str) -> Any:
    """Run the query with the streaming engine; a file polars cannot read is one UserError naming it."""
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


def _require(path: Path) -> list[str]:
    """The file, or the parts of a shard directory, as polars takes them."""
    return [str(part) for part in shards.part_files(path)]


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
        return pl.scan_parquet(_require(path)).select(
            messages.struct.field("messages"), pl.col("metadata").str.json_decode(METADATA_TYPE)
        ).with_row_index("row")
    return pl.scan_ndjson(_require(path), schema=JSONL_SCHEMA, ignore_errors=False).with_row_index("row")


def scan_parquet(path: Path) -> pl.LazyFrame:
    """The cartridges parquet with row numbers and `metadata` as a struct (it is stored as JSON text)."""
    files = _require(path)
    try:
        frame = pl.scan_parquet(files)
        schema = frame.collect_schema()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise UserError(f"{path}: not a readable parquet file ({str(exc).splitlines()[0]})") from None
    if "messages" not in schema:
        raise UserError(f"{path}: no 'messages' column; expected a cartridges parquet")
    stored = schema.get("metadata")
    if stored == pl.String:
        metadata = pl.col("metadata").str.json_decode(METADATA_TYPE)
    elif isinstance(stored, pl.Struct) and {"json", "finish_reason"} <= {f.name for f in stored.fields}:
        # convert's struct: the whole record metadata is its `json` field; `finish_reason` is the effective one.
        decoded = pl.col("metadata").struct.field("json").str.json_decode(METADATA_TYPE)
        metadata = pl.struct(
            [pl.col("metadata").struct.field("finish_reason") if name == "finish_reason" else decoded.struct.field(name)
             for name in METADATA_TYPE.to_schema()]
        )
    elif "metadata" in schema:
        # A struct written by another tool may have other fields; going through JSON picks ours.
        metadata = pl.col("metadata").struct.json_encode().str.json_decode(METADATA_TYPE)
    else:
        metadata = pl.lit(None, dtype=METADATA_TYPE)
    return frame.select("messages", metadata.alias("metadata")).with_row_index("row")


def _token_probs(item: pl.Expr) -> pl.Expr:
    """An assistant token's recorded top-K probabilities, sorted descending, from its logprobs item.

    Mirrors convert: non-finite logprobs are padding, rounding errors above 0 count as 0, and a token
    with no alternatives has its chosen token as the only entry.
    """
    top = item.struct.field("top_logprobs")
    alternatives = top.list.eval(pl.element().struct.field("logprob"))
    logprobs = pl.when(top.list.len().fill_null(0) > 0).then(alternatives).otherwise(pl.concat_list(item.struct.field("logprob")))
    finite = pl.element().filter(pl.element().is_finite())
    return logprobs.list.eval(finite.clip(upper_bound=0.0).exp()).list.sort(descending=True)


def jsonl_records(frame: pl.LazyFrame, thresholds: Sequence[float]) -> pl.LazyFrame:
    """One row per record, in a single pass over the file: the sample figures plus, per threshold, the
    entries convert would keep (shortest sorted prefix reaching it, else all) and the token rows whose
    whole top-K stays below it."""
    assistant = pl.col("role") == "assistant"
    content = pl.col("logprobs").struct.field("content")
    tokens = (
        frame.select("row", "metadata", "messages")
        .explode("messages")
        .unnest("messages")
        .select(
            "row",
            "metadata",
            pl.when(assistant).then(content).alias("item"),
            # Assistant tokens recorded without logprobs still count as tokens of the sample.
            pl.when(assistant & content.is_null()).then(pl.col("token_ids").list.len()).otherwise(0).alias("bare"),
        )
        .explode("item")
        .select("row", "metadata", "bare", pl.col("item").is_not_null().alias("token"), _token_probs(pl.col("item")).alias("probs"))
        .select(
            "row",
            "metadata",
            "bare",
            "token",
            pl.col("probs").list.len().alias("n"),
            pl.col("probs").list.sum().alias("mass"),
            pl.col("probs").list.eval(pl.element().cum_sum()).alias("cum"),
        )
    )
    per_threshold = []
    for index, threshold in enumerate(thresholds):
        below = pl.col("cum").list.eval(pl.element() < threshold).list.sum()
        per_threshold += [
            pl.min_horizontal(below + 1, pl.col("n")).filter(pl.col("token")).sum().alias(f"kept_{index}"),
            (pl.col("mass") < threshold).filter(pl.col("token")).sum().alias(f"below_{index}"),
        ]
    return tokens.group_by("row").agg(
        pl.col("metadata").first(),
        (pl.col("token").sum() + pl.col("bare").sum()).alias("tokens"),
        pl.col("token").sum().alias("tokens_with_logprobs"),
        pl.col("n").filter(pl.col("token")).sum().alias("recorded"),
        pl.col("n").filter(pl.col("token")).max().alias("k"),
        *per_threshold,
    )


def _curve_frame(totals: dict[str, Any], thresholds: Sequence[float]) -> pl.DataFrame:
    tokens = int(totals["tokens_with_logprobs"] or 0)
    kept = [int(totals[f"kept_{i}"] or 0) for i in range(len(thresholds))]
    below = [int(totals[f"below_{i}"] or 0) for i in range(len(thresholds))]
    return pl.DataFrame(
        {
            "threshold": [float(t) for t in thresholds],
            "kept_entries": kept,
            "mean_kept_per_token": [round(k / tokens, 4) if tokens else 0.0 for k in kept],
            "share_rows_below": [round(b / tokens, 6) if tokens else 0.0 for b in below],
        },
        schema={"threshold": pl.Float64, "kept_entries": pl.Int64, "mean_kept_per_token": pl.Float64, "share_rows_below": pl.Float64},
    )


def _sample_columns(frame: pl.DataFrame | pl.LazyFrame) -> Any:
    """SAMPLE_COLUMNS from per-record rows holding `row`, `tokens` and the `metadata` struct."""
    meta = pl.col("metadata").struct
    return frame.select(
        "row",
        meta.field("sample_idx").fill_null(pl.col("row").cast(pl.Int64)).alias("sample"),
        pl.col("tokens").fill_null(0).cast(pl.Int64),
        meta.field("finish_reason").fill_null("unknown").alias("finish_reason"),
        meta.field("failed").fill_null(False).alias("failed"),
        meta.field("memory_size_chars"),
        meta.field("memory_size_entries"),
        meta.field("memory_coverage"),
    )


def jsonl_figures(path: Path, thresholds: Sequence[float] = DEFAULT_MASS_THRESHOLDS, exclude: Sequence[int] = ()) -> JsonlFigures:
    """What the intermediate JSONL holds: per-sample figures and the mass curve over `thresholds`, leaving
    out the records numbered in `exclude` (those convert rejected)."""
    thresholds = _check_thresholds(thresholds, "thresholds")
    frame = scan_jsonl(path)
    if exclude:
        frame = frame.filter(~pl.col("row").is_in(pl.Series(list(exclude), dtype=pl.UInt32).implode()))
    records = _collect(jsonl_records(frame, thresholds), path, "the intermediate JSONL").sort("row")
    totals = records.select(pl.exclude("row", "metadata", "k").sum(), pl.col("k").max()).row(0, named=True)
    return JsonlFigures(
        samples=_sample_columns(records),
        tokens_with_logprobs=int(totals["tokens_with_logprobs"] or 0),
        recorded_entries=int(totals["recorded"] or 0),
        top_k=int(totals["k"] or 0),
        mass_curve=_curve_frame(totals, thresholds),
        file_bytes=shards.total_bytes(path),
    )


def parquet_entry_bytes(path: Path) -> int:
    """Compressed bytes of the kept-entry columns (token_idx, token_id, logprobs), from the footer alone."""
    wanted = {f"{ENTRY_COLUMN_PREFIX}{name}.list.element" for name in ENTRY_COLUMNS}
    total = 0
    for part in shards.part_files(path):
        metadata = pq.ParquetFile(part).metadata
        for group in range(metadata.num_row_groups):
            row_group = metadata.row_group(group)
            for column in range(row_group.num_columns):
                chunk = row_group.column(column)
                if chunk.path_in_schema in wanted:
                    total += chunk.total_compressed_size
    return total


def parquet_figures(path: Path) -> ParquetFigures:
    """What the cartridges parquet holds: per-sample tokens, kept entries per token, kept mass, -1 ids."""
    frame = scan_parquet(path)
    assistant = (
        _assistant_messages(frame)
        .with_row_index("message")
        .select("message", "top_logprobs")
    )
    top = pl.col("top_logprobs").struct
    entries = (
        assistant.select(
            "message",
            top.field("token_idx").alias("token_idx"),
            top.field("token_id").alias("token_id"),
            top.field("logprobs").alias("logprobs"),
        )
        .explode("token_idx", "token_id", "logprobs")
        .drop_nulls("token_idx")
    )
    per_token = entries.group_by("message", "token_idx").agg(
        pl.len().alias("kept"), pl.col("logprobs").cast(pl.Float64).exp().sum().alias("mass")
    )
    histogram = per_token.group_by("kept").agg(pl.len().cast(pl.Int64).alias("tokens")).sort("kept")
    totals = per_token.select(
        pl.col("kept").sum().alias("kept"), pl.col("mass").mean().alias("mass"), pl.len().alias("tokens_with_entries")
    )
    unmapped = entries.select((pl.col("token_id") == MISSING_ID).sum().alias("unmapped"))
    top_k = assistant.select(top.field("shape").list.get(1, null_on_oob=True).max().alias("k"))
    samples, histogram, totals, unmapped, top_k = _collect(
        [_parquet_samples(frame), histogram, totals, unmapped, top_k],
        path,
        "a cartridges parquet",
    )
    row = totals.row(0, named=True)
    return ParquetFigures(
        samples=samples,
        top_k=int(top_k.item() or 0),
        kept_entries=int(row["kept"] or 0),
        unmapped_chosen=int(samples["unmapped_chosen"].sum()),
        unmapped_kept=int(unmapped.item() or 0),
        mean_mass_kept=float(row["mass"] or 0.0),
        kept_histogram=_with_zero_bar(histogram, int(samples["tokens"].sum()), int(row["tokens_with_entries"] or 0)),
        file_bytes=shards.total_bytes(path),
        entry_bytes=parquet_entry_bytes(path),
    )


def _with_zero_bar(histogram: pl.DataFrame, tokens: int, tokens_with_entries: int) -> pl.DataFrame:
    """Tokens without any kept entry only happen for rows with no finite logprob; show them as bar 0."""
    histogram = histogram.select(pl.col("kept").cast(pl.Int64), pl.col("tokens").cast(pl.Int64))
    without = tokens - tokens_with_entries
    if without > 0:
        histogram = pl.concat([pl.DataFrame({"kept": [0], "tokens": [without]}, schema=histogram.schema), histogram])
    return histogram


# ------------------------------------------------------------------------------ figures convert counted


def figures_from_convert(
    figures_file: Path | None, jsonl: Path, parquet: Path, thresholds: Sequence[float]
) -> tuple[JsonlFigures, ParquetFigures] | None:
    """Both halves of the figures from convert's side output (convert_figures.py) and the parquet's
    metadata column and footer, without parsing the JSONL or the parquet's entries. None, with the
    reason logged, when the side output is absent, lacks a threshold, or belongs to other files: the
    caller then reads the files themselves."""
    if figures_file is None or not figures_file.is_file():
        log.info("no convert figures%s; computing them from %s", f" at {figures_file}" if figures_file else "", jsonl)
        return None
    _require(jsonl)
    _require(parquet)
    figures = read_figures(figures_file)
    missing = sorted(set(thresholds) - set(figures.thresholds))
    if missing:
        reason = f"counted at {figures.thresholds}, not at {missing} (re-run convert with these stats.mass_thresholds)"
    elif (figures.input_bytes, figures.parquet_bytes) != (shards.total_bytes(jsonl), shards.total_bytes(parquet)):
        reason = f"written for other files than {jsonl} and {parquet}"
    else:
        reason = None
    samples = None if reason else _collect(scan_parquet(parquet).select("row", "metadata"), parquet, "a cartridges parquet")
    if samples is not None and samples.height != figures.rows:
        reason, samples = f"counts {figures.rows} records but {parquet} has {samples.height}", None
    if reason or samples is None:
        log.warning("%s: %s; computing the figures from %s instead", figures_file, reason, jsonl)
        return None
    index = [figures.thresholds.index(t) for t in thresholds]
    totals = {"tokens_with_logprobs": figures.tokens_with_logprobs}
    for i, j in enumerate(index):
        totals[f"kept_{i}"], totals[f"below_{i}"] = figures.kept_at[j], figures.rows_below[j]
    from_jsonl = JsonlFigures(
        samples=pl.DataFrame({"tokens": figures.recorded_tokens_per_row}, schema={"tokens": pl.Int64}),
        tokens_with_logprobs=figures.tokens_with_logprobs,
        recorded_entries=figures.recorded_entries,
        top_k=figures.recorded_top_k,
        mass_curve=_curve_frame(totals, thresholds),
        file_bytes=shards.total_bytes(jsonl),
    )
    histogram = pl.DataFrame(
        {"kept": [int(k) for k in figures.kept_histogram], "tokens": list(figures.kept_histogram.values())},
        schema={"kept": pl.Int64, "tokens": pl.Int64},
    ).sort("kept")
    from_parquet = ParquetFigures(
        samples=_sample_columns(samples.with_columns(pl.Series("tokens", figures.tokens_per_row, dtype=pl.Int64))),
        top_k=figures.top_k,
        kept_entries=figures.kept_entries,
        unmapped_chosen=figures.unmapped_chosen,
        unmapped_kept=figures.unmapped_kept,
        mean_mass_kept=figures.mass_kept_sum / figures.tokens_with_entries if figures.tokens_with_entries else 0.0,
        kept_histogram=_with_zero_bar(histogram, sum(figures.tokens_per_row), figures.tokens_with_entries),
        file_bytes=shards.total_bytes(parquet),
        entry_bytes=parquet_entry_bytes(parquet),
    )
    return from_jsonl, from_parquet


# ------------------------------------------------------------------------------------------------- math


def project_parquet_bytes(kept_entries: Sequence[int], parquet_bytes: int, entry_bytes: int, actual_kept: int) -> list[int]:
    """Projected parquet size for other kept-entry counts: fixed part + measured bytes per kept entry.

    The fixed part (texts, token ids, metadata, footer) does not depend on `min_prob_mass`; the entry
    columns are assumed to compress to the same bytes per entry at any threshold.
    """
    fixed = max(parquet_bytes - entry_bytes, 0)
    per_entry = entry_bytes / actual_kept if actual_kept else 0.0
    return [int(round(fixed + per_entry * kept)) for kept in kept_entries]


def anchor_curve(curve: pl.DataFrame, min_prob_mass: float, parquet_kept: int, parquet_tokens: int) -> pl.DataFrame:
    """Shift the JSONL's mass curve by the entries convert adds that the JSONL does not record (an
    end-of-turn row appended at logprob 0 keeps one entry at any threshold), so that at
    `min_prob_mass` the curve equals the parquet and its other points are comparable to it."""
    at_min_mass = curve.filter(pl.col("threshold") == min_prob_mass)["kept_entries"]
    offset = parquet_kept - int(at_min_mass[0]) if len(at_min_mass) else 0
    if offset:
        log.debug("mass curve: %+d entries the parquet holds beyond the JSONL's top-K", offset)
    kept = pl.col("kept_entries") + offset
    mean = (kept / parquet_tokens).round(4) if parquet_tokens else pl.lit(0.0)
    return curve.with_columns(kept.alias("kept_entries"), mean.alias("mean_kept_per_token"))


def _check_threshold_matches(jsonl: JsonlFigures, parquet: ParquetFigures, min_prob_mass: float, path: Path) -> None:
    """Warn when the parquet was not made at `min_prob_mass` (convert does not record it in the file).

    The only entries the parquet may hold beyond the JSONL's rule are appended end-of-turn rows: one
    token and one entry each.
    """
    at_min_mass = jsonl.mass_curve.filter(pl.col("threshold") == min_prob_mass)["kept_entries"]
    expected = int(at_min_mass[0]) + parquet.assistant_tokens - int(jsonl.samples["tokens"].sum())
    if parquet.kept_entries != expected:
        log.warning(
            "%s holds %d kept entries but min_prob_mass %s would keep %d: was convert run with another "
            "min_prob_mass? Pass the one it used (--min-prob-mass, or --params params.yaml)",
            path, parquet.kept_entries, min_prob_mass, expected,
        )


def _check_thresholds(values: Sequence[float], name: str) -> tuple[float, ...]:
    out = tuple(sorted({float(v) for v in values}))
    if not out or not all(0.0 < v <= 1.0 for v in out):
        raise UserError(f"{name}: every mass threshold must be in (0, 1], got {list(values)}")
    return out


def _round(value: Any, digits: int = 4) -> float:
    return round(float(value), digits) if value is not None else 0.0


def _ratio(numerator: float, denominator: float, digits: int = 4) -> float:
    return round(numerator / denominator, digits) if denominator else 0.0


def read_generate_metrics(path: Path | None) -> dict[str, Any]:
    """metrics/generate.json, carried into stats; an absent file means 'no generation figures'."""
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object of generation metrics")
    return data


# ------------------------------------------------------------------------------------------------ stats


def memory_coverage_figures(coverage: pl.Series) -> dict[str, Any]:
    """memory.coverage (kept / wanted memory tokens): mean, p10 and the share of samples below LOW_COVERAGE.

    Nulls (records written before coverage was recorded) are left out; all null gives nulls.
    """
    known = coverage.drop_nulls()
    if known.is_empty():
        return {"coverage": {"mean": None, "p10": None}, "share_below_half": None, "samples_measured": 0}
    return {
        "coverage": {"mean": _round(known.mean()), "p10": _round(known.quantile(0.1, "linear"))},
        "share_below_half": _ratio(int((known < LOW_COVERAGE).sum()), known.len()),
        "samples_measured": known.len(),
    }


def read_rejects(parquet: Path) -> list[dict[str, Any]]:
    """The samples convert left out of `parquet` (its `<parquet>.rejects.jsonl`; none when absent)."""
    from memdistill.conversion import rejects_path

    path = rejects_path(parquet)
    if not path.is_file():
        return []
    return [record for _, record in fileio.read_jsonl(path)]


def check_one_logprobs_mode(jsonl: Path) -> None:
    """Refuse a dataset whose records mix raw and tempered logprobs (metadata.teacher.logprobs)."""
    modes = _collect(
        scan_jsonl(jsonl).select(pl.col("metadata").struct.field("teacher").struct.field("logprobs").alias("mode")).drop_nulls().unique(),
        jsonl, "the intermediate JSONL",
    )["mode"].sort().to_list()
    if len(modes) > 1:
        raise UserError(f"{jsonl}: records mix logprob contracts ({', '.join(modes)} in metadata.teacher.logprobs); generate it again with one generate.logprobs")


def compute_stats(
    jsonl: Path,
    parquet: Path,
    min_prob_mass: float,
    generate_metrics: Path | None = None,
    thresholds: Sequence[float] = DEFAULT_MASS_THRESHOLDS,
    figures: Path | None = None,
    gain: Path | None = None,
) -> StatsResult:
    """The metrics, plot tables and per-sample figures; from convert's `figures` side output when it is
    there and current, else by reading the JSONL and the parquet themselves (same figures either way)."""
    (min_prob_mass,) = _check_thresholds([min_prob_mass], "min_prob_mass")
    thresholds = _check_thresholds([*thresholds, min_prob_mass], "mass_thresholds")
    rejects = read_rejects(parquet)
    counted = figures_from_convert(figures, jsonl, parquet, thresholds)
    if counted is None:
        # convert refused a file mixing logprob contracts; reading the JSONL itself, stats checks it too.
        check_one_logprobs_mode(jsonl)
        skipped = [r["record"] for r in rejects if type(r.get("record")) is int]
        counted = jsonl_figures(jsonl, thresholds, skipped), parquet_figures(parquet)
    from_jsonl, from_parquet = counted
    if from_jsonl.samples.height != from_parquet.samples.height:
        raise UserError(
            f"{parquet}: {from_parquet.samples.height} records but {jsonl} has {from_jsonl.samples.height}; "
            f"the parquet is stale, re-run convert"
        )
    samples = from_parquet.samples
    tokens = samples["tokens"]
    total_tokens = int(tokens.sum())
    _check_threshold_matches(from_jsonl, from_parquet, min_prob_mass, parquet)
    curve = anchor_curve(from_jsonl.mass_curve, min_prob_mass, from_parquet.kept_entries, total_tokens)
    curve = curve.with_columns(
        pl.Series(
            "projected_parquet_bytes",
            project_parquet_bytes(curve["kept_entries"].to_list(), from_parquet.file_bytes, from_parquet.entry_bytes, from_parquet.kept_entries),
            dtype=pl.Int64,
        )
    ).with_columns((pl.col("projected_parquet_bytes") / 1e6).round(4).alias("projected_parquet_mb"))
    at_min_mass = curve.filter(pl.col("threshold") == min_prob_mass).row(0, named=True)
    finish = samples.group_by("finish_reason").agg(pl.len()).sort("finish_reason")
    unmapped = from_parquet.unmapped
    metrics: dict[str, Any] = {
        "samples": samples.height,
        "failed_reference_samples": int(samples["failed"].sum()),
        "memory": memory_coverage_figures(samples["memory_coverage"]),
        "assistant_tokens": {
            "total": total_tokens,
            "mean": _round(tokens.mean()),
            "p50": _round(tokens.quantile(0.5, "linear")),
            "p95": _round(tokens.quantile(0.95, "linear")),
        },
        "top_k": from_parquet.top_k,
        "min_prob_mass": min_prob_mass,
        "recorded_entries": from_jsonl.recorded_entries,
        "kept_entries": from_parquet.kept_entries,
        "mean_kept_per_token": _ratio(from_parquet.kept_entries, total_tokens),
        "mean_mass_kept": _round(from_parquet.mean_mass_kept),
        "share_rows_below_min_mass": _round(at_min_mass["share_rows_below"], 6),
        "rejected_samples": len(rejects),
        "rejected_by_reason": dict(sorted(collections.Counter(str(r.get("kind")) for r in rejects).items())),
        "unmapped_tokens": unmapped,
        "unmapped_rate": _ratio(unmapped, total_tokens + from_parquet.kept_entries, 6),
        "finish_reasons": {str(reason): int(count) for reason, count in finish.iter_rows()},
        "jsonl_bytes": from_jsonl.file_bytes,
        "parquet_bytes": from_parquet.file_bytes,
        "parquet_bytes_per_token": _ratio(from_parquet.file_bytes, total_tokens),
    }
    plots = {
        "kept_per_token": from_parquet.kept_histogram,
        "mass_curve": curve,
        "tokens_per_sample": samples.select("sample", "tokens"),
        "memory_vs_output": samples.select("sample", "memory_size_chars", "memory_size_entries", "tokens"),
        "memory_coverage": samples.select("sample", pl.col("memory_coverage").alias("coverage")),
    }
    # The memory gain: its own block (memdistill/gain/report.py), over every sample the gain stage scored.
    report = gain_report(gain, jsonl) if gain is not None else empty_report()
    metrics["memory_gain"] = report.metrics
    plots["memory_gain"] = report.histogram
    return StatsResult(metrics, plots, samples.select(*SAMPLE_COLUMNS[1:]), read_generate_metrics(generate_metrics), report)


# ---------------------------------------------------------------------------------------------- summary


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def _bytes(value: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(value) < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def extreme_samples(samples: pl.DataFrame, count: int = 5) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The `count` longest and shortest samples by assistant tokens; ties broken by sample index."""
    longest = samples.sort(["tokens", "sample"], descending=[True, False]).head(count)
    shortest = samples.sort(["tokens", "sample"]).head(count)
    return longest, shortest


def _coverage_cell(memory: dict[str, Any]) -> str:
    coverage = memory["coverage"]
    return "—" if coverage["mean"] is None else f"{coverage['mean']} / {coverage['p10']}"


def render_summary(result: StatsResult, images: Sequence[tuple[str, str]] = ()) -> str:
    """reports/summary.md: the metrics as a short table, the plots (`images`: title and path relative to
    the summary), the mass curve, the extreme samples."""
    m = result.metrics
    tokens = m["assistant_tokens"]
    rows = [
        ("samples", m["samples"]),
        ("failed reference samples", m["failed_reference_samples"]),
        ("memory coverage, kept / wanted tokens (mean / p10)", _coverage_cell(m["memory"])),
        ("samples below 50% memory coverage", "—" if m["memory"]["share_below_half"] is None else f"{m['memory']['share_below_half']:.2%}"),
        ("assistant tokens (total)", tokens["total"]),
        ("assistant tokens per sample (mean / p50 / p95)", f"{tokens['mean']} / {tokens['p50']} / {tokens['p95']}"),
        ("K (top_logprobs recorded)", m["top_k"]),
        ("min_prob_mass", m["min_prob_mass"]),
        ("kept entries", f"{m['kept_entries']} of {m['recorded_entries']} recorded"),
        ("mean kept per token", m["mean_kept_per_token"]),
        ("mean probability mass kept", m["mean_mass_kept"]),
        ("token rows whose top-K never reaches min_prob_mass", f"{m['share_rows_below_min_mass']:.2%}"),
        ("unmapped ids (-1)", f"{m['unmapped_tokens']} ({m['unmapped_rate']:.4%})"),
        ("finish reasons", ", ".join(f"{k}: {v}" for k, v in m["finish_reasons"].items()) or "—"),
        ("JSONL size", _bytes(m["jsonl_bytes"])),
        ("parquet size", _bytes(m["parquet_bytes"])),
        ("parquet bytes per assistant token", m["parquet_bytes_per_token"]),
    ]
    for key, value in result.generation.items():
        if isinstance(value, (int, float, str)):
            rows.append((f"generation: {key}", value))
    lines = ["# Dataset summary", "", "Written by the stats stage (`memdistill stats`); `metrics/stats.json` and `metrics/generate.json` hold the same figures.", ""]
    lines += _table(("figure", "value"), rows)
    if images:
        lines += ["", "## Plots", ""]
        for title, path in images:
            lines += [f"![{title}]({path})", ""]
        lines.pop()
    curve = result.plots["mass_curve"]
    lines += ["", "## What other `min_prob_mass` values would cost", ""]
    lines += _table(
        ("min_prob_mass", "entries kept per token", "rows never reaching it", "projected parquet"),
        [
            (f"**{r['threshold']}**" if r["threshold"] == m["min_prob_mass"] else r["threshold"], r["mean_kept_per_token"],
             f"{r['share_rows_below']:.2%}", _bytes(r["projected_parquet_bytes"]))
            for r in curve.iter_rows(named=True)
        ],
    )
    if result.memory_gain is not None:
        lines += gain_summary_lines(result.memory_gain)
    longest, shortest = extreme_samples(result.samples)
    for title, frame in (("Longest samples", longest), ("Shortest samples", shortest)):
        lines += ["", f"## {title}", ""]
        lines += _table(
            ("sample", "assistant tokens", "finish reason", "memory chars"),
            [(r["sample"], r["tokens"], r["finish_reason"], "—" if r["memory_size_chars"] is None else r["memory_size_chars"])
             for r in frame.iter_rows(named=True)],
        )
    return "\n".join(lines) + "\n"
