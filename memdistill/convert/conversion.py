"""The convert stage's engine: intermediate JSONL (or parquet) -> cartridges parquet, mass-sparsified.

Streaming: JSONL is read in blocks of whole lines through pyarrow's JSON reader with an explicit schema
(`ColumnarReader`: no Python object per top-k entry); a block it cannot take exactly, and the
intermediate parquet, go through the per-row reader (`RowConverter.row`: orjson, then a few dict
look-ups per entry), which also owns every bad-input error. A columnar block's assistant messages are
converted together (`ColumnarReader._assemble_block`: id checks, mass cut and counts once over the
block's flat arrays); a block with a message that needs a per-message rule goes through the per-row
reader's `with_logprobs` message by message. Both write the same bytes through the same writer. Rows are written one row group at a time, so peak memory depends
on the block and `rows_per_group`, never on the file size. Token strings resolve to ids once per
distinct string (see token_ids.py).

Why one module of ~1,300 lines: it still holds two converters that must write the same bytes (RowConverter,
per row, and ColumnarReader, per block); they share the id, mass-cut, rejection and split rules line for line,
and keeping them side by side is what keeps them equal until the per-row path only words the errors.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from itertools import chain, repeat
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import orjson
from tqdm import tqdm

from memdistill.convert.cartridges_io import CartridgesWriter, OutMessage, OutRow, OutTop, RowMetadata, rejoin
from memdistill.convert.figures import FiguresCollector, held_out_last, mass_curve_row_counts
from memdistill.convert.mass import MISSING_ID, flatten_by_mass
from memdistill.convert.split import SplitCounts, in_validation, observation_digest, too_small
from memdistill.convert.token_ids import OUT_OF_RANGE_ID, TOKEN_ID_PREFIX, TextTokenizer, TokenIdResolver, load_text_tokenizer
from memdistill.core import fileio
from memdistill.core.errors import UserError
from memdistill.core.lineage import row_lineage
from memdistill.core.shards import LineSpan
from memdistill.gain.selection import GainSelection

log = logging.getLogger(__name__)

# Servers print -0.0 or a rounding error such as 1e-7 for a certain token; above this it is not a logprob.
POSITIVE_LOGPROB_TOLERANCE = 1e-4
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")
# Distinct non-assistant texts (system prompts repeat on every row) whose token ids are kept.
TEXT_MEMO_SIZE = 4096
# Read JSONL through pyarrow's JSON reader (ColumnarReader); False: the per-row reader only (tests compare).
COLUMNAR = True


@dataclass
class ConvertSummary:
    """What convert did, counted; logged, and stored in the parquet footer under `memdistill.convert`."""

    rows: int = 0
    assistant_messages: int = 0
    assistant_tokens: int = 0
    topk_entries: int = 0
    kept_entries: int = 0
    unmapped_ids: int = 0
    chosen_not_in_topk: int = 0
    rows_without_alternatives: int = 0
    missing_logprobs: int = 0
    checked_ids: int = 0  # chosen and alternative ids looked at, rejected samples included
    dropped_alternatives: int = 0
    rejected: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    left_out_low_gain: int = 0  # below convert.min_memory_gain (not rejected: nothing is wrong with them)
    eot_appended: int = 0
    tokenizer: str = ""
    recorded_model: str | None = None
    min_prob_mass: float = 0.0

    @property
    def unmapped_rate(self) -> float:
        return self.unmapped_ids / self.checked_ids if self.checked_ids else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["unmapped_rate"] = round(self.unmapped_rate, 6)
        return out


# ---------------------------------------------------------------------------------------------- reading


def _parse_line(line: bytes, where: str) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        pass
    # orjson rejects NaN/Infinity literals that Python's json writes; parse them so the logprob check
    # can name the field instead of calling the whole line malformed.
    try:
        return json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        detail = f"{exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
        raise UserError(f"{where}: not valid JSON ({detail})") from None


def _numbered_lines(handle: Any, span: LineSpan | None) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of an open binary file, or of one span of it (a shard of a sharded convert)."""
    if span is None:
        yield from enumerate(handle, start=1)
        return
    handle.seek(span.start)
    remaining = span.end - span.start
    for lineno, line in enumerate(handle, start=span.first_line):
        if remaining <= 0:
            return
        remaining -= len(line)
        yield lineno, line


def iter_jsonl(path: Path, span: LineSpan | None = None) -> Iterator[tuple[str, Any]]:
    with open(path, "rb") as handle:
        for lineno, line in _numbered_lines(handle, span):
            if line.strip():
                where = f"{path}:{lineno}"
                yield where, _parse_line(line, where)


def iter_parquet(path: Path, batch_rows: int = 64) -> Iterator[tuple[str, Any]]:
    """The intermediate parquet (generate's `output_format: parquet`): the same fields as a JSONL line."""
    import pyarrow.parquet as pq

    number = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
        for row in batch.to_pylist():
            metadata = row.get("metadata")
            if isinstance(metadata, str):
                try:
                    row["metadata"] = json.loads(metadata) if metadata else {}
                except json.JSONDecodeError:
                    raise UserError(f"{path}: row {number}: metadata is not valid JSON") from None
            yield f"{path}: row {number}", row
            number += 1


def iter_records(path: Path, span: LineSpan | None = None) -> Iterator[tuple[str, Any]]:
    """(where, record) for every row of the intermediate dataset; `where` names file and line for errors."""
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    return iter_parquet(path) if fileio.is_parquet(path) else iter_jsonl(path, span)


def recorded_teacher_model(path: Path) -> str | None:
    """The teacher model named in the first row's metadata, if the file records one."""
    for _, row in iter_records(path):
        metadata = row.get("metadata") if isinstance(row, dict) else None
        # A malformed row is reported by the conversion itself, with its line.
        teacher = metadata.get("teacher") if isinstance(metadata, dict) else None
        model = teacher.get("model") if isinstance(teacher, dict) else None
        return model if isinstance(model, str) and model else None
    return None


# ---------------------------------------------------------------------------------------- validation


def _number_array(values: list[Any], describe: Any) -> np.ndarray:
    """float64 array of JSON numbers; `describe(i)` names the field of a bad element i."""
    array = np.asarray(values) if values else np.empty(0, dtype=np.float64)
    if array.dtype.kind not in "fi":
        for index, value in enumerate(values):
            if type(value) not in (int, float):
                raise UserError(f"{describe(index)}: expected a number, got {value!r}")
    array = array.astype(np.float64, copy=False)
    bad = np.isnan(array) | (array > POSITIVE_LOGPROB_TOLERANCE)
    if bad.any():
        index = int(np.argmax(bad))
        value = array[index]
        problem = "logprob is NaN" if np.isnan(value) else f"logprob {value} is positive (a log-probability must be <= 0)"
        raise UserError(f"{describe(index)}: {problem}")
    return np.minimum(array, 0.0)


def _items_of(message: dict[str, Any], where: str) -> list[Any] | None:
    logprobs = message.get("logprobs")
    if logprobs is None:
        return None
    items = logprobs.get("content") if isinstance(logprobs, dict) else logprobs
    if items is None:
        return None
    if not isinstance(items, list):
        raise UserError(f"{where}.logprobs.content: expected a list of per-token objects")
    return items


def _explain_bad_items(items: list[Any], where: str) -> None:
    """Raise the UserError naming the first per-token object that is not shaped like one."""
    for t, item in enumerate(items):
        if not isinstance(item, dict):
            raise UserError(f"{where}.logprobs.content[{t}]: expected an object with token and logprob")
        alternatives = item.get("top_logprobs") or []
        if not isinstance(alternatives, list) or not all(isinstance(a, dict) for a in alternatives):
            raise UserError(f"{where}.logprobs.content[{t}].top_logprobs: expected a list of objects")


def _exact_entry(entry: dict[str, Any]) -> bool:
    """An entry whose id is given, not recovered from text: a `token_id` field or a `token_id:N` string."""
    token = entry.get("token")
    return type(entry.get("token_id")) is int or (isinstance(token, str) and token.startswith(TOKEN_ID_PREFIX))


def _int_list(value: Any) -> list[int] | None:
    if isinstance(value, list) and all(type(x) is int for x in value):
        return value
    return None


# ---------------------------------------------------------------------------------------- conversion


class SampleRejected(Exception):
    """A sample cartridges could not train on correctly; it goes to the rejects file with this reason."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def rejects_path(output: Path) -> Path:
    """Where the samples left out of the parquet are listed, with their reasons: beside the output."""
    return output.with_name(output.name + ".rejects.jsonl")


def ends_turn(finish_reason: Any, last_id: int | None, eot_ids: Sequence[int]) -> bool:
    """Whether the teacher ended its turn: it said "stop", or its last token is an end-of-turn id (Tokasaurus
    reports "length" when the EOS is the max_tokens-th token)."""
    return finish_reason == "stop" or (last_id is not None and last_id in eot_ids)


def first_duplicate(row_of: np.ndarray, ids: np.ndarray, ignore: int = MISSING_ID) -> int:
    """Index (into the flat arrays) of the first entry whose id already appeared in the same row, or -1."""
    if ids.size < 2:
        return -1
    order = np.lexsort((np.arange(ids.size), ids, row_of))
    same = (row_of[order][1:] == row_of[order][:-1]) & (ids[order][1:] == ids[order][:-1]) & (ids[order][1:] != ignore)
    if not same.any():
        return -1
    return int(order[1:][same].min())


def drop_unrecovered(row_of: np.ndarray, lp: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Alternatives whose id could not be recovered leave their row; the mass cut then uses what remains."""
    keep = ids != MISSING_ID
    dropped = int(keep.size - keep.sum())
    if dropped == 0:
        return row_of, lp, ids, 0
    return row_of[keep], lp[keep], ids[keep], dropped


def _id_field(where: str, t: int, column: int | None) -> str:
    base = f"{where}.logprobs.content[{t}]"
    return f"{base}.token_id" if column is None else f"{base}.top_logprobs[{column}].token_id"


class RowConverter:
    """One intermediate record -> one cartridges row; counts what it saw into `summary`."""

    figures: FiguresCollector | None = None  # stats' figures, counted from the recorded top-k (convert_figures.py)
    selection: GainSelection | None = None  # each row's memory gain, and convert.min_memory_gain

    def __init__(self, tokenizer: Any, min_prob_mass: float, strict: bool, summary: ConvertSummary, append_eot: bool = True) -> None:
        self.resolver = TokenIdResolver(tokenizer)
        self.tokenizer: TextTokenizer = self.resolver.tokenizer
        self.min_prob_mass = min_prob_mass
        self.strict = strict
        self.append_eot = append_eot
        self.summary = summary
        self.eot_ids = self._end_of_turn_ids(self.tokenizer)
        self._text_ids: dict[str, np.ndarray] = {}
        self.rejects: list[dict[str, Any]] = []
        self.records_seen = 0  # 0-based number of the record being converted (named in the rejects file)
        self._logprobs_mode: tuple[str, str] | None = None  # (mode, where first seen)

    @staticmethod
    def _end_of_turn_ids(tokenizer: TextTokenizer) -> list[int]:
        """End-of-turn ids, the chat template's own first (what a normal stop ends with), then every id of the
        model's generation_config `eos_token_id` (Llama-3.1: <|eot_id|> and <|eom_id|>), then eos."""
        vocab = tokenizer.vocab
        ids = [vocab[name] for name in END_OF_TURN_TOKENS if name in vocab]
        ids += [i for i in tokenizer.generation_eos_ids if 0 <= i < tokenizer.size]
        if tokenizer.eos_token_id is not None:
            ids.append(int(tokenizer.eos_token_id))
        return list(dict.fromkeys(ids))

    def encode_texts(self, texts: list[str]) -> list[np.ndarray]:
        """Token ids of system/user texts without special tokens; one batched call for the new ones."""
        new = list(dict.fromkeys(t for t in texts if t not in self._text_ids))
        if new and len(self._text_ids) + len(new) > TEXT_MEMO_SIZE:
            # Clearing drops texts counted as cached above: everything asked for must be encoded now.
            self._text_ids.clear()
            new = list(dict.fromkeys(texts))
        if new:
            encoded = self.tokenizer.encode_batch(new)
            for text, ids in zip(new, encoded):
                self._text_ids[text] = np.asarray(ids, dtype=np.int64)
        return [self._text_ids[t] for t in texts]

    def assistant(self, message: dict[str, Any], where: str, finish_reason: Any) -> OutMessage:
        content = message.get("content") or ""
        items = _items_of(message, where)
        given = _int_list(message.get("token_ids"))
        if given is None and isinstance(message.get("token_ids"), list):
            index, value = next((i, v) for i, v in enumerate(message["token_ids"]) if type(v) is not int)
            raise UserError(f"{where}.token_ids[{index}]: id {value!r} is outside the vocabulary [0, {self.resolver.limit}) of {self.tokenizer.name}")
        if items is None:
            self.without_logprobs(where)
        T = len(items)
        try:
            # map(dict.get, ...) walks the entries in C: no Python frame per top-k entry.
            alternatives = list(map(dict.get, items, repeat("top_logprobs")))
            if None in alternatives:
                alternatives = [alts or [] for alts in alternatives]
            counts = np.fromiter(map(len, alternatives), dtype=np.int64, count=T)
            flat = list(chain.from_iterable(alternatives))
            alt_values = list(map(dict.get, flat, repeat("logprob")))
        except (AttributeError, TypeError):
            _explain_bad_items(items, where)
            raise
        starts = np.concatenate([[0], np.cumsum(counts)])

        def alt_field(index: int) -> str:
            t = int(np.searchsorted(starts, index, side="right") - 1)
            return f"{where}.logprobs.content[{t}].top_logprobs[{index - starts[t]}].logprob"

        alt_lp = _number_array(alt_values, alt_field)
        alt_ids = self.resolver.resolve_entries(flat)
        chosen_lp = _number_array(list(map(dict.get, items, repeat("logprob"))), lambda t: f"{where}.logprobs.content[{t}].logprob")
        chosen = self.resolver.resolve_entries(items)
        chosen_exact = given is not None or all(_exact_entry(item) for item in items)
        return self.with_logprobs(content, given, where, finish_reason, counts, alt_lp, alt_ids, chosen_lp, chosen, chosen_exact)

    def without_logprobs(self, where: str) -> NoReturn:
        """An assistant message with no per-token record: cartridges would crash or train on nothing."""
        if self.strict:
            raise UserError(f"{where}: assistant message has no logprobs (strict: every assistant message needs them)")
        self.summary.missing_logprobs += 1
        raise SampleRejected("no_logprobs", f"{where}: assistant message has no logprobs")

    def _check_given(self, given: list[int], where: str) -> np.ndarray:
        limit = self.resolver.limit
        try:
            array = np.asarray(given, dtype=np.int64)
            bad = np.flatnonzero((array < 0) | (array >= limit))
            index = int(bad[0]) if bad.size else -1
        except OverflowError:  # an id beyond int64 (e.g. 2**70)
            index = next(i for i, value in enumerate(given) if not -(2**63) <= value < 2**63)
        if index >= 0:
            raise UserError(f"{where}.token_ids[{index}]: id {given[index]} is outside the vocabulary [0, {limit}) of {self.tokenizer.name}")
        return array

    def with_logprobs(
        self,
        content: str,
        given: list[int] | None,
        where: str,
        finish_reason: Any,
        counts: np.ndarray,
        alt_lp: np.ndarray,
        alt_ids: np.ndarray,
        chosen_lp: np.ndarray,
        chosen: np.ndarray,
        chosen_exact: bool,
    ) -> OutMessage:
        """One assistant message from validated flat arrays: `counts[t]` alternatives of token t, their
        logprobs/ids in `alt_lp`/`alt_ids` (row-major), the chosen tokens' logprobs and ids. Shared by the
        per-row and the columnar reader, so both write the same bytes. Raises SampleRejected for a sample
        that must not reach the parquet, UserError for input that is wrong."""
        T = int(counts.size)
        self.summary.checked_ids += T + int(alt_ids.size)
        row_of = np.repeat(np.arange(T, dtype=np.int64), counts)
        row_starts = np.cumsum(counts) - counts
        limit = self.resolver.limit
        # Exact ids outside the vocabulary: cartridges would index the embedding with them.
        bad = np.flatnonzero(alt_ids == OUT_OF_RANGE_ID)
        if bad.size:
            t = int(row_of[bad[0]])
            raise UserError(f"{_id_field(where, t, int(bad[0] - row_starts[t]))}: id outside the vocabulary [0, {limit}) of {self.tokenizer.name}")
        duplicate = first_duplicate(row_of, alt_ids)
        if duplicate >= 0:
            t = int(row_of[duplicate])
            raise UserError(f"{_id_field(where, t, int(duplicate - row_starts[t]))}: id {int(alt_ids[duplicate])} appears twice in one top-k row")
        # The teacher's own sequence wins over per-item ids when the message carries it.
        eot_id = None
        if given is not None:
            given_ids = self._check_given(given, where)
            if len(given) == T + 1 and int(given_ids[-1]) in self.eot_ids:
                # The ids carry the end-of-turn the logprobs omit: keep it (with its row) or drop it.
                eot_id = int(given_ids[-1]) if self.append_eot else None
            elif len(given) != T:
                raise UserError(f"{where}: token_ids has {len(given)} ids but logprobs.content has {T} tokens")
            chosen = given_ids[:T]
        else:
            bad = np.flatnonzero(chosen == OUT_OF_RANGE_ID)
            if bad.size:
                raise UserError(f"{_id_field(where, int(bad[0]), None)}: id outside the vocabulary [0, {limit}) of {self.tokenizer.name}")
        unrecovered = np.flatnonzero(chosen == MISSING_ID)
        if unrecovered.size:
            self.summary.unmapped_ids += int(unrecovered.size)
            raise SampleRejected("chosen_not_recovered", f"{where}.logprobs.content[{int(unrecovered[0])}]: the chosen token's id cannot be recovered exactly ({unrecovered.size} of {T} tokens)")
        if not chosen_exact:
            decoded = self.tokenizer.decode_text(chosen.tolist())
            if decoded is not None and decoded != content:
                self.summary.unmapped_ids += T
                raise SampleRejected("ids_do_not_decode_to_content", f"{where}: the recovered ids decode to {_short(decoded)!r}, not to the content {_short(content)!r}")
        last = int(chosen[-1]) if T else None
        if eot_id is None and self.append_eot and self.eot_ids and finish_reason == "stop" and (last is None or last not in self.eot_ids):
            eot_id = self.eot_ids[0]

        row_of, alt_lp, alt_ids, dropped = drop_unrecovered(row_of, alt_lp, alt_ids)
        if dropped:
            counts = np.bincount(row_of, minlength=T).astype(np.int64)
            self.summary.dropped_alternatives += dropped
            self.summary.unmapped_ids += dropped
        self.summary.assistant_messages += 1
        # Rows with no alternatives recorded: the chosen token is the only known entry of its row.
        empty = np.flatnonzero(counts == 0)
        if empty.size:
            row_of = np.concatenate([row_of, empty])
            alt_lp = np.concatenate([alt_lp, chosen_lp[empty]])
            alt_ids = np.concatenate([alt_ids, chosen[empty]])
            order = np.argsort(row_of, kind="stable")
            row_of, alt_lp, alt_ids = row_of[order], alt_lp[order], alt_ids[order]
            counts = counts.copy()
            counts[empty] = 1
            self.summary.rows_without_alternatives += int(empty.size)
        K = int(counts.max()) if T else 1
        row_starts = np.cumsum(counts) - counts
        column = np.arange(row_of.size) - np.repeat(row_starts, counts)
        dense_lp = np.full((T, K), -np.inf, dtype=np.float64)
        dense_ids = np.full((T, K), MISSING_ID, dtype=np.int64)
        dense_lp[row_of, column] = alt_lp
        dense_ids[row_of, column] = alt_ids
        valid = np.isfinite(dense_lp)

        self.summary.topk_entries += int(valid.sum())
        if self.figures is not None:
            self.figures.add_token_rows(dense_lp)
        in_top = ((dense_ids == chosen[:, None]) & valid).any(axis=1)
        self.summary.chosen_not_in_topk += int((~in_top).sum())

        if eot_id is not None:
            # The teacher stopped on end-of-turn but its logprobs omit that token (some servers drop it):
            # keep the id, since training expects it, with a row that holds just it at logprob 0.
            # Fabricated, so counted (eot_appended) and flagged in the row's metadata.eot_appended.
            dense_lp = np.vstack([dense_lp, np.full((1, K), -np.inf)])
            dense_ids = np.vstack([dense_ids, np.full((1, K), MISSING_ID, dtype=np.int64)])
            dense_lp[T, 0], dense_ids[T, 0] = 0.0, eot_id
            chosen = np.append(chosen, eot_id)
            self.summary.eot_appended += 1

        flat_top = flatten_by_mass(dense_lp, dense_ids, self.min_prob_mass)
        self.summary.assistant_tokens += int(chosen.size)
        self.summary.kept_entries += int(flat_top.token_id.size)
        top = OutTop(flat_top.token_idx, flat_top.token_id, flat_top.logprobs, flat_top.shape)
        return OutMessage("assistant", content, chosen, top)

    def row(self, raw: Any, where: str) -> OutRow | None:
        """The converted row, or None when the sample was rejected (listed in `rejects`)."""
        self.records_seen += 1
        try:
            row = self._row(raw, where)
        except SampleRejected as rejected:
            metadata = raw.get("metadata") if isinstance(raw, dict) else None
            self.reject(where, metadata if isinstance(metadata, dict) else {}, rejected)
            return None
        return row if self.accept(row) else None

    def accept(self, row: OutRow) -> bool:
        """Whether a converted row is written (False: below convert.min_memory_gain, counted); a written row's
        figures are committed now, before the next record's are counted (the columnar reader converts a whole
        block before any of its rows is written)."""
        if self.selection is not None and not self.selection.keeps(row.metadata.memory_gain):
            self.summary.left_out_low_gain += 1
            if self.figures is not None:
                self.figures.leave_out(row.metadata.sample_idx)
            return False
        if self.figures is not None:
            self.figures.add_row(row)
        return True

    def reject(self, where: str, metadata: dict[str, Any], rejected: SampleRejected) -> None:
        """Leave a sample out of the parquet (listed with its reason), or fail under `strict`."""
        if self.strict:
            raise UserError(f"{rejected.reason} (strict: failing instead of rejecting the sample)")
        if self.figures is not None:
            self.figures.drop_row()  # its messages may already be counted
        self.summary.rejected += 1
        self.summary.rejected_by_reason[rejected.kind] = self.summary.rejected_by_reason.get(rejected.kind, 0) + 1
        self.rejects.append({"record": self.records_seen - 1, "where": where, "sample_idx": metadata.get("sample_idx"),
                             "kind": rejected.kind, "reason": rejected.reason})

    def check_logprobs_mode(self, metadata: dict[str, Any], where: str) -> None:
        """A file holds one logprob contract: raw and tempered values must not train side by side."""
        mode = logprobs_mode(metadata)
        if mode is None:
            return
        if self._logprobs_mode is None:
            self._logprobs_mode = (mode, where)
        elif self._logprobs_mode[0] != mode:
            first, seen = self._logprobs_mode
            raise UserError(
                f"{where}: metadata.teacher.logprobs is '{mode}' but {seen} is '{first}'; a dataset must not mix raw "
                f"and tempered logprobs: generate it again with one generate.logprobs"
            )

    def _row(self, raw: Any, where: str) -> OutRow:
        if not isinstance(raw, dict):
            raise UserError(f"{where}: expected an object with 'messages'")
        messages = raw.get("messages")
        if not isinstance(messages, list) or not messages:
            raise UserError(f"{where}: 'messages' must be a non-empty list")
        metadata = raw.get("metadata")
        if metadata is None:
            metadata = {}
        if not isinstance(metadata, dict):
            raise UserError(f"{where}: 'metadata' must be an object")
        self.check_logprobs_mode(metadata, where)
        finish_reason = metadata.get("finish_reason")
        out: list[OutMessage] = []
        texts: list[tuple[int, str]] = []
        eot_before = self.summary.eot_appended
        for number, message in enumerate(messages):
            field = f"{where}: messages[{number}]"
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise UserError(f"{field}: expected an object with a 'role'")
            content = message.get("content")
            if content is not None and not isinstance(content, str):
                raise UserError(f"{field}.content: expected a string")
            if message["role"] == "assistant":
                out.append(self.assistant(message, field, finish_reason))
            else:
                texts.append((len(out), content or ""))
                out.append(OutMessage(message["role"], content or "", np.empty(0, dtype=np.int64), None))
        system_prompt = raw.get("system_prompt")
        if system_prompt is None:
            system_prompt = next((m.get("content") or "" for m in messages if m.get("role") == "system"), "")
        return self.finish_row(out, texts, metadata, eot_before, system_prompt, raw.get("type"))

    def finish_row(self, out: list[OutMessage], texts: list[tuple[int, str]], metadata: dict[str, Any], eot_before: int, system_prompt: Any, kind: Any) -> OutRow:
        """Token ids of the non-assistant texts (one batched call) and the row-level columns."""
        for (position, _), ids in zip(texts, self.encode_texts([text for _, text in texts])):
            out[position].token_ids = ids
        eot_appended = self.summary.eot_appended > eot_before
        if eot_appended:
            metadata = {**metadata, "convert": {"eot_appended": True}}
        finish = metadata.get("finish_reason")
        last = next((m.token_ids for m in reversed(out) if m.role == "assistant"), None)
        if finish == "length" and last is not None and last.size and int(last[-1]) in self.eot_ids:
            finish = "stop"  # ended on its end-of-turn token as the max_tokens-th (Tokasaurus says "length")
        sample_idx = metadata.get("sample_idx")
        row_metadata = RowMetadata(
            sample_idx=sample_idx if type(sample_idx) is int and -(2**63) <= sample_idx < 2**63 else None,
            finish_reason=finish if isinstance(finish, str) else None,
            logprobs=logprobs_mode(metadata),
            eot_appended=eot_appended,
            json=_metadata_json(metadata),
            lineage=row_lineage(metadata),
            memory_gain=self.selection.gain_of(sample_idx, f"sample {sample_idx}") if self.selection is not None else None,
        )
        return OutRow(out, str(system_prompt), row_metadata, str(kind or ""), observation_digest(out))


def logprobs_mode(metadata: dict[str, Any]) -> str | None:
    """The logprob contract a record says it was generated under (metadata.teacher.logprobs), if any."""
    teacher = metadata.get("teacher")
    mode = teacher.get("logprobs") if isinstance(teacher, dict) else None
    return mode if isinstance(mode, str) else None


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _metadata_json(metadata: dict[str, Any]) -> str:
    try:
        return orjson.dumps(metadata, option=orjson.OPT_NON_STR_KEYS).decode()
    except (TypeError, orjson.JSONEncodeError):  # e.g. NaN or huge ints, which Python's json still writes
        return json.dumps(metadata, ensure_ascii=False)


# ------------------------------------------------------------------------------ columnar fast path (JSONL)

# JSONL is read in blocks of about this many bytes (whole lines): bounds the reader's memory.
BLOCK_BYTES = 2 << 20
ARROW_BLOCK_BYTES = 1 << 20
_METADATA_KEY = b'"metadata"'
_ENTRY_FIELDS = ("token", "logprob", "token_id", "bytes")


def _arrow_schema() -> Any:
    """The fields convert reads, typed; anything else in a line is ignored. `metadata` is an empty struct:
    arrow only says whether it is an object, its text is read from the line itself (free-form)."""
    import pyarrow as pa

    entry = [("token", pa.string()), ("logprob", pa.float64()), ("token_id", pa.int64()), ("bytes", pa.list_(pa.int64()))]
    item = pa.struct(entry + [("top_logprobs", pa.list_(pa.struct(entry)))])
    message = pa.struct(
        [("role", pa.string()), ("content", pa.string()), ("token_ids", pa.list_(pa.int64())), ("logprobs", pa.struct([("content", pa.list_(item))]))]
    )
    return pa.schema([("messages", pa.list_(message)), ("system_prompt", pa.string()), ("type", pa.string()), ("metadata", pa.struct([]))])


class _Fallback(Exception):
    """The block holds something the columnar reader does not handle exactly; the per-row path redoes it."""


def _list_parts(array: Any) -> tuple[np.ndarray, np.ndarray, Any]:
    """(lengths with -1 for null lists, offsets [n+1] into the values, values) of a list array."""
    # Arrow's own offsets (a null list spans nothing), rebased to the values `flatten` returns.
    raw = array.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = raw - raw[0]
    lengths = np.diff(offsets)
    if array.null_count:
        null = ~array.is_valid().to_numpy(zero_copy_only=False)
        if lengths[null].any():  # a null list over values: flatten skips them, so count as arrow does
            import pyarrow.compute as pc

            lengths = pc.list_value_length(array).fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
            offsets = np.zeros(lengths.size + 1, dtype=np.int64)
            np.cumsum(np.maximum(lengths, 0), out=offsets[1:])
            return lengths, offsets, array.flatten()
        lengths[null] = -1
    return lengths, offsets, array.flatten()


def _fields(struct: Any) -> dict[str, Any]:
    if struct.null_count:
        raise _Fallback("null object")
    return {field.name: child for field, child in zip(struct.type, struct.flatten())}


def _floats(array: Any) -> np.ndarray:
    """Validated logprobs: the per-row reader's NaN/positive/not-a-number errors are its own to raise."""
    if array.null_count:
        raise _Fallback("missing logprob")
    values = array.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    if (np.isnan(values) | (values > POSITIVE_LOGPROB_TOLERANCE)).any():
        raise _Fallback("bad logprob")
    return np.minimum(values, 0.0)


def _exact_column(token_id: Any, token: Any) -> np.ndarray:
    """Per entry: the id is given (a `token_id` field or a `token_id:N` string), as _exact_entry."""
    import pyarrow.compute as pc

    by_string = pc.fill_null(pc.starts_with(token, TOKEN_ID_PREFIX), False)
    return pc.or_(token_id.is_valid(), by_string).to_numpy(zero_copy_only=False)


def _line_metadata(line: bytes, present: bool) -> dict[str, Any]:
    """The record's `metadata` object, parsed from the line's own text (it is free-form).

    Only when `"metadata":` occurs as a key exactly once in the line (so it is the top-level one arrow
    saw; the same string as a token value is not followed by a colon); anything else goes to the per-row
    reader. json's parser gives the same values as orjson's, and also reads the NaN/Infinity that the
    per-row reader falls back to json for."""
    keys: list[int] = []
    at = line.find(_METADATA_KEY)
    while at >= 0:
        after = at + len(_METADATA_KEY)
        if line[after:after + 8].lstrip()[:1] == b":":
            keys.append(after)
        at = line.find(_METADATA_KEY, after)
    if not keys and not present:
        return {}
    if len(keys) != 1:
        raise _Fallback("metadata key")
    text = line[keys[0]:].decode("utf-8")
    start = text.index(":") + 1
    start += len(text[start:start + 64]) - len(text[start:start + 64].lstrip())
    value, _ = _JSON_DECODER.raw_decode(text, start)
    if value is None and not present:
        return {}
    if not isinstance(value, dict) or not present:
        raise _Fallback("metadata value")
    return value


_JSON_DECODER = json.JSONDecoder()


class ColumnarReader:
    """Converts a block of JSONL lines with pyarrow's JSON reader (explicit schema) instead of per-entry
    Python objects: token strings resolve once per distinct (token, bytes) pair, logprobs are validated
    for the whole block at once, and the block's assistant messages are converted together
    (`_assemble_block`), or, when one needs a per-message rule, each through the per-row reader's
    `with_logprobs`; the output is byte-identical either way. Any shape it does not handle exactly raises
    `_Fallback` before a single count is taken, and the caller redoes the block row by row (which then
    raises the usual file:line errors)."""

    def __init__(self, converter: RowConverter) -> None:
        import pyarrow.json as pj

        self.converter = converter
        self.parse_options = pj.ParseOptions(explicit_schema=_arrow_schema(), unexpected_field_behavior="ignore")
        # Per key type ("string": token only; "binary": token + bytes): every key seen, and its id.
        self._known: dict[str, tuple[Any, np.ndarray]] = {}

    def _resolve(self, fields: dict[str, Any]) -> np.ndarray:
        """Ids of entries (token, token_id, bytes columns), as TokenIdResolver.resolve_entries gives them."""
        exact = fields["token_id"]
        n = len(exact)
        limit = self.converter.resolver.limit
        if exact.null_count < n:
            values = exact.drop_null().to_numpy(zero_copy_only=False)
            if values.size and (values.min() < 0 or values.max() >= limit):
                raise _Fallback("exact id outside the vocabulary")  # the per-row reader names the field
        if exact.null_count == 0:
            ids = exact.to_numpy(zero_copy_only=False).astype(np.int64, copy=True)
        else:
            ids = self._string_ids(fields["token"], self._bytes_column(fields["bytes"], n))
            if exact.null_count < n:
                valid = exact.is_valid()
                ids[valid.to_numpy(zero_copy_only=False)] = exact.filter(valid).to_numpy()
        return ids

    @staticmethod
    def _bytes_column(raw: Any, n: int) -> Any:
        """The `bytes` lists as one binary value per entry (null and [] both empty: no bytes), or None."""
        import pyarrow as pa

        if raw.null_count == n:
            return None
        _, offsets, values = _list_parts(raw)
        if values.null_count:
            raise _Fallback("null byte")
        octets = values.to_numpy(zero_copy_only=False)
        if octets.size and (octets.min() < 0 or octets.max() > 255 or offsets[-1] > np.iinfo(np.int32).max):
            raise _Fallback("bytes out of range")
        return pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(octets.astype(np.uint8))])

    def _string_ids(self, tokens: Any, raws: Any) -> np.ndarray:
        """Ids from token strings (and bytes): each distinct key is resolved once per file, in Python; the
        per-entry look-up is arrow's hash join (`index_in`) against every key seen so far."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if tokens.null_count:
            raise _Fallback("token without a string")
        if raws is None:
            keys, kind = tokens, "string"
        else:
            # token UTF-8, 0xFF (never in UTF-8), bytes: one binary key per (token, bytes) pair.
            keys, kind = pc.binary_join_element_wise(tokens.cast(pa.binary()), raws, b"\xff"), "binary"
        known, known_ids = self._known.get(kind, (pa.array([], type=keys.type), np.empty(0, dtype=np.int64)))
        position = pc.index_in(keys, value_set=known)
        if position.null_count:
            new = pc.unique(keys.filter(position.is_null())).to_pylist()
            resolve = self.converter.resolver.resolve
            if kind == "string":
                found = [resolve(token) for token in new]
            else:
                found = [resolve(token.decode("utf-8"), raw or None) for token, raw in (key.split(b"\xff", 1) for key in new)]
            old = len(known)
            known = pa.concat_arrays([known, pa.array(new, type=keys.type)])
            known_ids = np.concatenate([known_ids, np.asarray(found, dtype=np.int64)])
            self._known[kind] = (known, known_ids)
            # Only the unseen entries need looking up again, among the new keys (appended after `old`).
            missing = position.is_null()
            position = pc.replace_with_mask(
                position.cast(pa.int64()), missing,
                pc.add(pc.index_in(keys.filter(missing), value_set=known.slice(old)).cast(pa.int64()), old),
            )
        return known_ids[position.to_numpy(zero_copy_only=False)]

    def convert_block(self, lines: list[bytes], wheres: list[str]) -> list[OutRow]:
        """Rows of a block; raises `_Fallback` (before counting anything) when the block needs the per-row path."""
        import pyarrow as pa
        import pyarrow.json as pj

        # Only lines that look like one object: pyarrow 26 crashes (segfault) on input starting with a
        # top-level `null`, and a line holding several values is the per-row reader's to reject.
        if not all(line[:1] == b"{" and line[-1:] == b"}" for line in lines):
            raise _Fallback("a line that is not an object")
        data = b"\n".join(lines)
        try:
            # Arrow parses its blocks on parallel threads; a block must hold the longest line whole.
            read_options = pj.ReadOptions(block_size=max(max(map(len, lines)) + 1, ARROW_BLOCK_BYTES))
            table = pj.read_json(pa.BufferReader(data), read_options=read_options, parse_options=self.parse_options)
            if table.num_rows != len(lines):
                raise _Fallback("not one object per line")
            prepared = self._prepare(table.combine_chunks(), lines)
        except _Fallback:
            raise
        except Exception as exc:  # noqa: BLE001 - arrow's parse/type errors, bad UTF-8: the per-row reader names them
            raise _Fallback(str(exc)) from None
        return self._assemble(prepared, wheres)

    def _prepare(self, table: Any, lines: list[bytes]) -> dict[str, Any]:
        import pyarrow as pa

        messages = table.column("messages").chunk(0) if table.column("messages").num_chunks else None
        if messages is None or messages.null_count:
            raise _Fallback("messages")
        row_lengths, row_offsets, message_struct = _list_parts(messages)
        if (row_lengths <= 0).any():
            raise _Fallback("empty messages")
        message = _fields(message_struct)
        roles = message["role"].to_pylist()
        if None in roles:
            raise _Fallback("role")
        given_lengths, given_offsets, given_values = _list_parts(message["token_ids"])
        if given_values.null_count:
            raise _Fallback("token_ids")
        logprobs = message["logprobs"]
        # A null logprobs object makes its content null too (flatten merges the parent's validity).
        item_content = logprobs.flatten()[0]
        item_lengths, item_offsets, item_struct = _list_parts(item_content)
        item = _fields(item_struct)
        alt_counts, alt_offsets, alt_struct = _list_parts(item["top_logprobs"])
        alt = _fields(alt_struct)
        present = table.column("metadata").is_valid().to_numpy(zero_copy_only=False)
        # Chosen tokens and alternatives resolve in one pass (the chosen are mostly among the alternatives).
        both = {name: pa.concat_arrays([item[name], alt[name]]) for name in _ENTRY_FIELDS}
        ids = self._resolve(both)
        chosen_ids, alt_ids = ids[: len(item_struct)], ids[len(item_struct):]
        return {
            "chosen_ids": chosen_ids,
            "alt_ids": alt_ids,
            "row_offsets": row_offsets,
            "roles": roles,
            "contents": message["content"].to_pylist(),
            "given_lengths": given_lengths,
            "given_offsets": given_offsets,
            "given_values": given_values.to_numpy(zero_copy_only=False).astype(np.int64, copy=False),
            "item_lengths": item_lengths,
            "item_offsets": item_offsets,
            "alt_counts": np.maximum(alt_counts, 0),  # null top_logprobs: no alternatives, as per row
            "alt_offsets": alt_offsets,
            "chosen_exact": _exact_column(item["token_id"], item["token"]),
            "chosen_lp": _floats(item["logprob"]),
            "alt_lp": _floats(alt["logprob"]),
            "metadata": [_line_metadata(line, bool(flag)) for line, flag in zip(lines, present)],
            "system_prompts": table.column("system_prompt").to_pylist(),
            "types": table.column("type").to_pylist(),
        }

    def _assemble(self, p: dict[str, Any], wheres: list[str]) -> list[OutRow]:
        block = self._block_messages(p, wheres)
        if block is not None:
            return self._assemble_block(p, wheres, block)
        converter = self.converter
        rows: list[OutRow] = []
        for r, where in enumerate(wheres):
            metadata = p["metadata"][r]
            converter.records_seen += 1
            try:
                row = self._assemble_row(p, r, where, metadata)
            except SampleRejected as rejected:
                converter.reject(where, metadata, rejected)
                continue
            if converter.accept(row):
                rows.append(row)
        return rows

    def _block_messages(self, p: dict[str, Any], wheres: list[str]) -> BlockMessages | None:
        """The block's assistant messages as flat arrays, or None (nothing counted) when one of them needs the
        per-message rules: given token_ids, no or empty logprobs, an id out of range or twice in a row, a
        chosen token not recovered, ids that do not decode to the content. Those rows go message by message."""
        converter = self.converter
        roles = p["roles"]
        assistant = np.fromiter((role == "assistant" for role in roles), dtype=bool, count=len(roles))
        messages = np.flatnonzero(assistant)
        if messages.size == 0:
            return None
        tokens = p["item_lengths"][messages]
        if (tokens <= 0).any() or (p["given_lengths"][messages] >= 0).any():
            return None
        item_of_message = np.repeat(assistant, np.maximum(p["item_lengths"], 0))
        items = np.flatnonzero(item_of_message)
        alt_taken = np.repeat(item_of_message, p["alt_counts"])
        alt_ids, alt_lp = p["alt_ids"][alt_taken], p["alt_lp"][alt_taken]
        chosen, chosen_lp = p["chosen_ids"][items], p["chosen_lp"][items]
        if (alt_ids == OUT_OF_RANGE_ID).any() or (chosen == OUT_OF_RANGE_ID).any() or (chosen == MISSING_ID).any():
            return None
        counts = p["alt_counts"][items]
        # Every token row padded to the block's widest: per row, the same values in the same columns
        # as in its own message's [T, K] (padding is -inf, mass 0), so the mass cut keeps the same entries.
        ordered_ids = np.sort(_dense_rows(counts, alt_lp, alt_ids)[1], axis=1)
        if ((ordered_ids[:, 1:] == ordered_ids[:, :-1]) & (ordered_ids[:, 1:] != MISSING_ID)).any():
            return None
        message_rows = np.zeros(messages.size + 1, dtype=np.int64)
        np.cumsum(tokens, out=message_rows[1:])
        exact = np.logical_and.reduceat(p["chosen_exact"][items], message_rows[:-1])
        contents = p["contents"]
        tokenizer = converter.tokenizer
        if tokenizer.decode is not None and not exact.all():
            # decode_text's rule (special tokens left out) for the whole block at once; one decode a message.
            special = np.fromiter(tokenizer.special_ids, dtype=np.int64, count=len(tokenizer.special_ids))
            plain = ~np.isin(chosen, special)
            bounds = np.zeros(message_rows.size, dtype=np.int64)
            np.cumsum(np.add.reduceat(plain, message_rows[:-1]), out=bounds[1:])
            text_ids = chosen[plain].tolist()
            for j in np.flatnonzero(~exact):
                if tokenizer.decode(text_ids[bounds[j]:bounds[j + 1]]) != (contents[messages[j]] or ""):
                    return None
        record_of_message = np.searchsorted(p["row_offsets"], messages, side="right") - 1
        return BlockMessages(messages, record_of_message, message_rows, counts, alt_lp, alt_ids, chosen, chosen_lp)

    def _assemble_block(self, p: dict[str, Any], wheres: list[str], b: BlockMessages) -> list[OutRow]:
        """Every row of a block whose assistant messages need no per-message rule: the drop of unrecovered
        alternatives, the end-of-turn rows, the mass cut and the counts, each once over the whole block."""
        converter = self.converter
        summary = converter.summary
        metadata = p["metadata"]
        n_records = len(wheres)
        summary.checked_ids += int(b.chosen.size + b.alt_ids.size)
        kept_alt = b.alt_ids != MISSING_ID
        dropped = int(kept_alt.size - np.count_nonzero(kept_alt))
        counts, alt_lp, alt_ids = b.counts, b.alt_lp, b.alt_ids
        if dropped:
            row_of = np.repeat(np.arange(counts.size), counts)[kept_alt]
            counts = np.bincount(row_of, minlength=counts.size).astype(np.int64)
            alt_lp, alt_ids = alt_lp[kept_alt], alt_ids[kept_alt]
            summary.dropped_alternatives += dropped
            summary.unmapped_ids += dropped
        summary.assistant_messages += int(b.messages.size)
        empty = counts == 0
        summary.rows_without_alternatives += int(np.count_nonzero(empty))
        # Rows with no alternatives recorded: the chosen token is the only known entry of its row.
        dense_lp, dense_ids = _dense_rows(np.maximum(counts, 1), alt_lp, alt_ids, empty, b.chosen_lp, b.chosen)
        valid = np.isfinite(dense_lp)
        per_row = valid.sum(axis=1)
        summary.topk_entries += int(per_row.sum())
        in_top = ((dense_ids == b.chosen[:, None]) & valid).any(axis=1)
        summary.chosen_not_in_topk += int(np.count_nonzero(~in_top))
        starts = b.message_rows[:-1]
        widths = np.maximum.reduceat(np.maximum(counts, 1), starts)  # K of each message's [T, K]
        row_record = np.repeat(b.record_of_message, np.diff(b.message_rows))
        record_rows = np.searchsorted(row_record, np.arange(n_records + 1))
        if converter.figures is not None:
            kept, below = mass_curve_row_counts(dense_lp, converter.figures.thresholds)
            kept_sums, below_sums = _segment_sums(kept, record_rows), _segment_sums(below.astype(np.int64), record_rows)
            recorded_sums = _segment_sums(per_row, record_rows)
            top_k = np.zeros(n_records, dtype=np.int64)
            np.maximum.at(top_k, row_record, per_row)

        # End of turn the logprobs omit: one more row per message, holding just the id at logprob 0.
        stops = np.array([metadata[r].get("finish_reason") == "stop" for r in range(n_records)], dtype=bool)
        last = b.chosen[b.message_rows[1:] - 1]
        eot = np.zeros(b.messages.size, dtype=bool)
        if converter.append_eot and converter.eot_ids:
            eot = stops[b.record_of_message] & ~np.isin(last, converter.eot_ids)
        rows_out = np.diff(b.message_rows) + eot
        out_rows = np.zeros(b.messages.size + 1, dtype=np.int64)
        np.cumsum(rows_out, out=out_rows[1:])
        position = np.arange(b.chosen.size) + np.repeat(out_rows[:-1] - starts, np.diff(b.message_rows))
        eot_rows = out_rows[1:][eot] - 1
        full_lp = np.full((int(out_rows[-1]), dense_lp.shape[1]), -np.inf)
        full_ids = np.full(full_lp.shape, MISSING_ID, dtype=np.int64)
        full_lp[position], full_ids[position] = dense_lp, dense_ids
        eot_id = converter.eot_ids[0] if converter.eot_ids else MISSING_ID
        full_lp[eot_rows, 0], full_ids[eot_rows, 0] = 0.0, eot_id
        full_chosen = np.full(full_lp.shape[0], eot_id, dtype=np.int64)
        full_chosen[position] = b.chosen
        flat = flatten_by_mass(full_lp, full_ids, converter.min_prob_mass)
        summary.assistant_tokens += int(full_chosen.size)
        summary.kept_entries += int(flat.token_id.size)
        entry_rows = np.zeros(full_lp.shape[0] + 1, dtype=np.int64)
        np.cumsum(np.bincount(flat.token_idx, minlength=full_lp.shape[0]), out=entry_rows[1:])
        message_of_row = np.repeat(np.arange(b.messages.size), rows_out)
        token_idx = flat.token_idx - out_rows[:-1][message_of_row][flat.token_idx]
        eot_of_record = np.bincount(b.record_of_message, weights=eot, minlength=n_records).astype(np.int64)

        by_message = dict(zip(b.messages.tolist(), range(b.messages.size)))
        roles, contents = p["roles"], p["contents"]
        rows: list[OutRow] = []
        for r, where in enumerate(wheres):
            converter.records_seen += 1
            converter.check_logprobs_mode(metadata[r], where)
            if converter.figures is not None:
                converter.figures.add_counts(kept_sums[r], below_sums[r], int(record_rows[r + 1] - record_rows[r]), int(recorded_sums[r]), int(top_k[r]))
            out: list[OutMessage] = []
            texts: list[tuple[int, str]] = []
            first, end = int(p["row_offsets"][r]), int(p["row_offsets"][r + 1])
            for m in range(first, end):
                content = contents[m] or ""
                j = by_message.get(m)
                if j is None:
                    texts.append((len(out), content))
                    out.append(OutMessage(roles[m], content, np.empty(0, dtype=np.int64), None))
                    continue
                lo, hi = int(out_rows[j]), int(out_rows[j + 1])
                a, z = int(entry_rows[lo]), int(entry_rows[hi])
                top = OutTop(token_idx[a:z], flat.token_id[a:z], flat.logprobs[a:z], (hi - lo, int(widths[j])))
                out.append(OutMessage("assistant", content, full_chosen[lo:hi], top))
            eot_before = summary.eot_appended
            summary.eot_appended += int(eot_of_record[r])
            system_prompt = p["system_prompts"][r]
            if system_prompt is None:
                system_prompt = next((contents[m] or "" for m in range(first, end) if roles[m] == "system"), "")
            row = converter.finish_row(out, texts, metadata[r], eot_before, system_prompt, p["types"][r])
            if converter.accept(row):
                rows.append(row)
        return rows

    def _assemble_row(self, p: dict[str, Any], r: int, where: str, metadata: dict[str, Any]) -> OutRow:
        converter = self.converter
        roles, contents = p["roles"], p["contents"]
        item_offsets, alt_offsets = p["item_offsets"], p["alt_offsets"]
        converter.check_logprobs_mode(metadata, where)
        finish_reason = metadata.get("finish_reason")
        out: list[OutMessage] = []
        texts: list[tuple[int, str]] = []
        eot_before = converter.summary.eot_appended
        first, last = int(p["row_offsets"][r]), int(p["row_offsets"][r + 1])
        for m in range(first, last):
            content = contents[m] or ""
            if roles[m] != "assistant":
                texts.append((len(out), content))
                out.append(OutMessage(roles[m], content, np.empty(0, dtype=np.int64), None))
                continue
            field = f"{where}: messages[{m - first}]"
            given = None
            if p["given_lengths"][m] >= 0:
                given = p["given_values"][p["given_offsets"][m]:p["given_offsets"][m + 1]].tolist()
            if p["item_lengths"][m] < 0:
                converter.without_logprobs(field)
            a, b = int(item_offsets[m]), int(item_offsets[m + 1])
            lo, hi = int(alt_offsets[a]), int(alt_offsets[b])
            out.append(converter.with_logprobs(
                content, given, field, finish_reason, p["alt_counts"][a:b],
                p["alt_lp"][lo:hi], p["alt_ids"][lo:hi], p["chosen_lp"][a:b], p["chosen_ids"][a:b],
                given is not None or bool(p["chosen_exact"][a:b].all()),
            ))
        system_prompt = p["system_prompts"][r]
        if system_prompt is None:
            system_prompt = next((contents[m] or "" for m in range(first, last) if roles[m] == "system"), "")
        return converter.finish_row(out, texts, metadata, eot_before, system_prompt, p["types"][r])


@dataclass(slots=True)
class BlockMessages:
    """A block's assistant messages, flat: token rows in file order, alternatives row-major."""

    messages: np.ndarray  # indices (into the block's messages) of the assistant messages
    record_of_message: np.ndarray  # the record (line) of each
    message_rows: np.ndarray  # [M+1] offsets of each message's token rows
    counts: np.ndarray  # alternatives per token row
    alt_lp: np.ndarray
    alt_ids: np.ndarray
    chosen: np.ndarray  # chosen id per token row
    chosen_lp: np.ndarray


def _dense_rows(counts: np.ndarray, lp: np.ndarray, ids: np.ndarray, lone: np.ndarray | None = None,
                lone_lp: np.ndarray | None = None, lone_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Row-major entries (`counts[t]` of row t) as dense [rows, K] logprobs (-inf padding) and ids; rows
    flagged `lone` hold instead the single entry (lone_lp[t], lone_ids[t])."""
    rows = int(counts.size)
    width = int(counts.max()) if rows else 1
    dense_lp = np.full((rows, width), -np.inf)
    dense_ids = np.full((rows, width), MISSING_ID, dtype=np.int64)
    filled = counts if lone is None else np.where(lone, 0, counts)
    row_of = np.repeat(np.arange(rows), filled)
    column = np.arange(row_of.size) - np.repeat(np.cumsum(filled) - filled, filled)
    dense_lp[row_of, column] = lp
    dense_ids[row_of, column] = ids
    if lone is not None:
        dense_lp[lone, 0] = lone_lp[lone]
        dense_ids[lone, 0] = lone_ids[lone]
    return dense_lp, dense_ids


def _segment_sums(values: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Sums of values[bounds[i]:bounds[i+1]] along axis 0 (empty segments give 0)."""
    totals = np.zeros((values.shape[0] + 1, *values.shape[1:]), dtype=values.dtype)
    np.cumsum(values, axis=0, out=totals[1:])
    return totals[bounds[1:]] - totals[bounds[:-1]]


def _jsonl_blocks(path: Path, block_bytes: int, span: LineSpan | None = None) -> Iterator[tuple[list[bytes], list[str]]]:
    """Non-blank lines of a JSONL file (or of one span of it) in blocks of about `block_bytes`, with their file:line names."""
    lines: list[bytes] = []
    wheres: list[str] = []
    size = 0
    with open(path, "rb") as handle:
        for lineno, line in _numbered_lines(handle, span):
            if not line.strip():
                continue
            lines.append(line.strip(b" \t\r\n"))  # JSON whitespace only
            wheres.append(f"{path}:{lineno}")
            size += len(line)
            if size >= block_bytes:
                yield lines, wheres
                lines, wheres, size = [], [], 0
    if lines:
        yield lines, wheres


def iter_converted(path: Path, converter: RowConverter, columnar: bool = True, span: LineSpan | None = None) -> Iterator[OutRow]:
    """Converted rows in file order: JSONL through the columnar reader block by block (falling back to the
    per-row reader for a block it cannot take exactly), parquet and fallbacks row by row."""
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    if fileio.is_parquet(path) or not columnar:
        for where, raw in iter_records(path, span):
            row = converter.row(raw, where)
            if row is not None:
                yield row
        return
    import pyarrow as pa

    reader = ColumnarReader(converter)
    # Arrow's default allocator (mimalloc) keeps freed blocks mapped: ~50 MB more peak RSS per run; the
    # system allocator returns them, so peak memory stays that of one block. Restored afterwards.
    previous_pool = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        for lines, wheres in _jsonl_blocks(path, BLOCK_BYTES, span):
            try:
                rows = reader.convert_block(lines, wheres)
            except _Fallback as why:
                log.debug("%s: per-row reader for %s..%s (%s)", path, wheres[0], wheres[-1], why)
                rows = [converter.row(_parse_line(line, where), where) for line, where in zip(lines, wheres)]
            yield from (row for row in rows if row is not None)
    finally:
        pa.set_memory_pool(previous_pool)


@dataclass
class ConvertedPart:
    """What converting one file (or one span of it) produced besides the parquet: the counters, the samples
    it rejected (`record` numbered within this part), the logprob contract its records declare, and the split:
    its counts and, per row written in input order, whether it went to the validation file."""

    summary: ConvertSummary
    rejects: list[dict[str, Any]]
    logprobs_mode: tuple[str, str] | None  # (mode, where it was first seen); None when no record says
    split: SplitCounts = field(default_factory=SplitCounts)
    held_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))


@dataclass(frozen=True, slots=True)
class HeldOut:
    """The validation split: the file held-out rows go to (None: no split), the share of observations, the seed."""

    output: Path | None = None
    fraction: float = 0.0
    seed: int = 0


def convert_part(
    input_path: Path,
    output: Path,
    tokenizer_name: str,
    recorded: str | None,
    min_prob_mass: float,
    strict: bool = False,
    rows_per_group: int = 64,
    append_eot: bool = True,
    figures: FiguresCollector | None = None,
    span: LineSpan | None = None,
    held_out: HeldOut = HeldOut(),
    footer: dict[str, str] | None = None,
    selection: GainSelection | None = None,
) -> ConvertedPart:
    """Write the converted rows of `input_path` (or its `span`) to the parquet `output`, the rows of held-out
    observations to `held_out.output`, both atomically, with `footer` (and the counters) in their footers.

    No whole-dataset checks here (unmapped-id limit, nothing left to write, a split too small to stand) and no
    rejects file: the caller decides those over everything it converts (one file, or all parts of a shard directory).
    """
    summary = ConvertSummary(tokenizer=tokenizer_name, recorded_model=recorded, min_prob_mass=min_prob_mass)
    converter = RowConverter(load_text_tokenizer(tokenizer_name), min_prob_mass, strict, summary, append_eot)
    converter.figures = figures
    converter.selection = selection
    split = SplitCounts()
    held_rows: list[bool] = []
    with fileio.atomic_path(output) as tmp, contextlib.ExitStack() as stack:
        held_tmp = stack.enter_context(fileio.atomic_path(held_out.output)) if held_out.output is not None else None
        writers = [CartridgesWriter(tmp, rows_per_group=rows_per_group)]
        if held_tmp is not None:
            writers.append(CartridgesWriter(held_tmp, rows_per_group=rows_per_group))
        try:
            for row in tqdm(iter_converted(input_path, converter, COLUMNAR, span), desc="convert", unit="row", dynamic_ncols=True, mininterval=1.0):
                held = held_tmp is not None and in_validation(row.observation, held_out.fraction, held_out.seed)
                writers[held].write(row)
                split.add(row.observation, held)
                held_rows.append(held)
                summary.rows += 1
            for writer in writers:
                for key, value in {**(footer or {}), "memdistill.convert": json.dumps(summary.to_dict())}.items():
                    writer.set_footer(key, value)
        except BaseException:
            for writer in writers:
                writer.abort()
            raise
        for writer in writers:
            writer.close()
    return ConvertedPart(summary, converter.rejects, converter._logprobs_mode, split, np.asarray(held_rows, dtype=bool))


def keep_split_or_rejoin(parts: list[tuple[Path, Path | None, ConvertedPart]], fraction: float, rows_per_group: int) -> None:
    """Over the whole output (`parts`: train file, validation file, what was converted into them): when the
    split cannot stand (split.too_small), say so in one line and put every held-out row back into train."""
    counts = SplitCounts()
    for _, _, part in parts:
        counts.merge(part.split)
    reason = too_small(counts, fraction) if any(held is not None for _, held, _ in parts) else None
    if reason is None:
        if counts.validation_rows:
            log.info("convert: %d row(s) of %d observation(s) in validation, %d row(s) of %d observation(s) in train",
                     counts.validation_rows, len(counts.validation_observations), counts.train_rows, len(counts.train_observations))
        return
    log.warning("convert: %s", reason)
    for train, held, part in parts:
        if held is not None and part.held_rows.any():
            rejoin(train, held, part.held_rows, rows_per_group)
        part.held_rows = np.zeros_like(part.held_rows)


def check_converted(input_path: Path, summary: ConvertSummary, rejects: list[dict[str, Any]], max_unmapped_rate: float) -> None:
    """The checks over a whole converted dataset: the unmapped-id limit, and at least one row written."""
    if summary.unmapped_rate > max_unmapped_rate:
        raise UserError(
            f"{input_path}: {summary.unmapped_ids} token ids ({summary.unmapped_rate:.1%}, more than "
            f"max_unmapped_rate {max_unmapped_rate:.1%}) could not be recovered exactly: dataset generated by "
            f"{summary.recorded_model or 'an unrecorded model'}, converting with {summary.tokenizer}; pass --model with the teacher's tokenizer"
        )
    if summary.rows == 0:
        if summary.left_out_low_gain:
            raise UserError(f"{input_path}: every sample ({summary.left_out_low_gain}) is below convert.min_memory_gain; lower it or set it to null")
        if rejects:
            raise UserError(f"{input_path}: every sample was rejected ({summary.rejected}), e.g. {rejects[0]['reason']}")
        raise UserError(f"{input_path}: no rows to convert (the file is empty)")


def log_converted(summary: ConvertSummary, rejected_file: Path) -> None:
    if summary.rejected:
        log.warning("%d sample(s) rejected (not in the parquet): %s; listed in %s", summary.rejected,
                    ", ".join(f"{k}: {v}" for k, v in sorted(summary.rejected_by_reason.items())), rejected_file)
    if summary.dropped_alternatives:
        log.warning("%d top-k alternative(s) whose id could not be recovered exactly were dropped from their rows", summary.dropped_alternatives)
    if summary.left_out_low_gain:
        log.info("%d sample(s) below convert.min_memory_gain left out (listed in convert's figures)", summary.left_out_low_gain)
    if summary.eot_appended:
        log.warning("%d assistant message(s) stopped on end-of-turn without its logprob; appended it at logprob 0", summary.eot_appended)


def convert_file(
    input_path: Path,
    output: Path,
    model: str | None,
    min_prob_mass: float,
    strict: bool = False,
    max_unmapped_rate: float = 0.01,
    rows_per_group: int = 64,
    append_eot: bool = True,
    figures: FiguresCollector | None = None,
    held_out: HeldOut = HeldOut(),
    footer: dict[str, str] | None = None,
    selection: GainSelection | None = None,
) -> ConvertSummary:
    """Convert one intermediate file into one cartridges parquet (and the held-out observations into
    `held_out.output`), rejected samples into `<output>.rejects.jsonl`; both parquet files or neither."""
    if not 0.0 < min_prob_mass <= 1.0:
        raise UserError(f"min_prob_mass: must be in (0, 1], got {min_prob_mass}")
    if not input_path.is_file():
        raise UserError(f"{input_path}: file not found")
    fileio.ensure_parent(output)
    recorded = recorded_teacher_model(input_path)
    tokenizer_name = model or recorded
    if not tokenizer_name:
        raise UserError(
            f"{input_path}: the dataset records no teacher model (metadata.teacher.model); "
            f"pass --model (a hub id, a local folder, or smollm2-135m-instruct)"
        )
    rejected_file = rejects_path(output)
    with fileio.atomic_path(output) as tmp, contextlib.ExitStack() as stack:
        # Written to temporary paths, so a failed check leaves the previous outputs in place.
        held_tmp = stack.enter_context(fileio.atomic_path(held_out.output)) if held_out.output is not None else None
        part = convert_part(input_path, tmp, tokenizer_name, recorded, min_prob_mass, strict, rows_per_group, append_eot, figures,
                            held_out=HeldOut(held_tmp, held_out.fraction, held_out.seed), footer=footer, selection=selection)
        check_converted(input_path, part.summary, part.rejects, max_unmapped_rate)
        keep_split_or_rejoin([(tmp, held_tmp, part)], held_out.fraction, rows_per_group)
        if figures is not None:
            held_out_last(figures.figures, part.held_rows)
        write_rejects(rejected_file, part.rejects)
    log_converted(part.summary, rejected_file)
    return part.summary


def write_rejects(path: Path, rejects: list[dict[str, Any]]) -> None:
    """The rejected samples, one JSON object a line; no file when none (a stale list would mislead)."""
    if not rejects:
        path.unlink(missing_ok=True)
        return
    with fileio.atomic_output(path) as handle:
        for reject in rejects:
            handle.write(fileio.dump_json_line(reject))
