"""convert's one engine: a block of intermediate records (an arrow table, records.py) -> cartridges rows.

Every record goes through the same arrays: token strings resolve to ids once per distinct string (arrow's hash
look-up against every string seen, token_ids.py for the new ones), logprobs are validated for the whole
block, and the block's assistant messages are converted together: id checks, rejections, the end-of-turn
rows, the mass cut and every count, each once over the block's flat arrays. What the engine cannot take
exactly (a null where an object belongs, an id outside the vocabulary, a repeated id in a row, token_ids of
the wrong length) raises `Unconvertible` before anything is counted; the record-by-record check (checks.py)
then words the error, or hands back the records normalised, which this engine converts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from memdistill.convert.cartridges_io import OutMessage, OutRow, RowMetadata
from memdistill.convert.figures import FiguresCollector
from memdistill.convert.mass import MISSING_ID
from memdistill.convert.outcomes import ConvertSummary, SampleRejected, Unconvertible, logprobs_mode, strict_error
from memdistill.convert.split import observation_digest
from memdistill.convert.token_ids import OUT_OF_RANGE_ID, TOKEN_ID_PREFIX, TextTokenizer, TokenIdResolver
from memdistill.core.errors import UserError
from memdistill.core.lineage import row_lineage
from memdistill.gain.selection import GainSelection

# Servers print -0.0 or a rounding error such as 1e-7 for a certain token; above this it is not a logprob.
POSITIVE_LOGPROB_TOLERANCE = 1e-4
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")
# Distinct non-assistant texts (system prompts repeat on every row) whose token ids are kept.
TEXT_MEMO_SIZE = 4096
_ENTRY_FIELDS = ("token", "logprob", "token_id", "bytes")


def end_of_turn_ids(tokenizer: TextTokenizer) -> list[int]:
    """End-of-turn ids, the chat template's own first (what a normal stop ends with), then every id of the
    model's generation_config `eos_token_id` (Llama-3.1: <|eot_id|> and <|eom_id|>), then eos."""
    vocab = tokenizer.vocab
    ids = [vocab[name] for name in END_OF_TURN_TOKENS if name in vocab]
    ids += [i for i in tokenizer.generation_eos_ids if 0 <= i < tokenizer.size]
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    return list(dict.fromkeys(ids))


def _metadata_json(metadata: dict[str, Any]) -> str:
    try:
        return orjson.dumps(metadata, option=orjson.OPT_NON_STR_KEYS).decode()
    except (TypeError, orjson.JSONEncodeError):  # e.g. NaN or huge ints, which Python's json still writes
        return json.dumps(metadata, ensure_ascii=False)


# ------------------------------------------------------------------------------------------- arrow -> numpy


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
        raise Unconvertible("null object")
    return {f.name: child for f, child in zip(struct.type, struct.flatten())}


def _floats(array: Any) -> np.ndarray:
    """Validated logprobs: a missing, NaN or positive one is the check's to word."""
    if array.null_count:
        raise Unconvertible("missing logprob")
    values = array.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    if (np.isnan(values) | (values > POSITIVE_LOGPROB_TOLERANCE)).any():
        raise Unconvertible("bad logprob")
    return np.minimum(values, 0.0)


def _exact_column(token_id: Any, token: Any) -> np.ndarray:
    """Per entry: the id is given (a `token_id` field or a `token_id:N` string)."""
    import pyarrow.compute as pc

    by_string = pc.fill_null(pc.starts_with(token, TOKEN_ID_PREFIX), False)
    return pc.or_(token_id.is_valid(), by_string).to_numpy(zero_copy_only=False)


def offsets_of(lengths: np.ndarray) -> np.ndarray:
    offsets = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def dense_rows(counts: np.ndarray, lp: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-major entries (`counts[t]` of row t) as dense [rows, K] logprobs (-inf padding) and ids (MISSING_ID)."""
    rows = int(counts.size)
    width = max(int(counts.max()), 1) if rows else 1
    dense_lp = np.full((rows, width), -np.inf)
    dense_ids = np.full((rows, width), MISSING_ID, dtype=np.int64)
    row_of = np.repeat(np.arange(rows), counts)
    column = np.arange(row_of.size) - np.repeat(np.cumsum(counts) - counts, counts)
    dense_lp[row_of, column] = lp
    dense_ids[row_of, column] = ids
    return dense_lp, dense_ids


def segment_sums(values: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Sums of values[bounds[i]:bounds[i+1]] along axis 0 (empty segments give 0)."""
    totals = np.zeros((values.shape[0] + 1, *values.shape[1:]), dtype=values.dtype)
    np.cumsum(values, axis=0, out=totals[1:])
    return totals[bounds[1:]] - totals[bounds[:-1]]


@dataclass(slots=True)
class Prepared:
    """A block's arrow table as flat numpy arrays: messages, their token rows (items) and alternatives."""

    row_offsets: np.ndarray  # [records+1] into the messages
    roles: list[str]
    contents: list[str | None]
    given_lengths: np.ndarray  # per message, -1: no token_ids
    given_offsets: np.ndarray
    given_values: np.ndarray
    item_lengths: np.ndarray  # per message, -1: no logprobs
    item_offsets: np.ndarray
    alt_counts: np.ndarray  # per item
    chosen_ids: np.ndarray
    chosen_lp: np.ndarray
    chosen_exact: np.ndarray
    alt_ids: np.ndarray
    alt_lp: np.ndarray
    system_prompts: list[str | None]
    types: list[str | None]


# ------------------------------------------------------------------------------------------------- engine


class Engine:
    """Converts blocks of records into cartridges rows; counts what it saw into `summary`, lists rejected
    samples in `rejects`."""

    figures: FiguresCollector | None = None  # stats' figures, counted from the recorded top-k
    selection: GainSelection | None = None  # each row's memory gain, and convert.min_memory_gain

    def __init__(self, tokenizer: Any, min_prob_mass: float, strict: bool, summary: ConvertSummary, append_eot: bool = True) -> None:
        self.resolver = TokenIdResolver(tokenizer)
        self.tokenizer: TextTokenizer = self.resolver.tokenizer
        self.min_prob_mass = min_prob_mass
        self.strict = strict
        self.append_eot = append_eot
        self.summary = summary
        self.eot_ids = end_of_turn_ids(self.tokenizer)
        self.rejects: list[dict[str, Any]] = []
        self.records_seen = 0  # records converted so far (a reject names its record's 0-based number)
        self.logprobs_mode: tuple[str, str] | None = None  # (mode, where first seen)
        self._text_ids: dict[str, np.ndarray] = {}
        # Per key type ("string": token only; "binary": token + bytes): every key seen, and its id.
        self._known: dict[str, tuple[Any, np.ndarray]] = {}
        self.special_ids = np.fromiter(self.tokenizer.special_ids, dtype=np.int64, count=len(self.tokenizer.special_ids))

    # ------------------------------------------------------------------------------------ per record

    def check_logprobs_mode(self, metadata: dict[str, Any], where: str) -> None:
        """A file holds one logprob contract: raw and tempered values must not train side by side."""
        mode = logprobs_mode(metadata)
        if mode is None:
            return
        if self.logprobs_mode is None:
            self.logprobs_mode = (mode, where)
        elif self.logprobs_mode[0] != mode:
            first, seen = self.logprobs_mode
            raise UserError(
                f"{where}: metadata.teacher.logprobs is '{mode}' but {seen} is '{first}'; a dataset must not mix raw "
                f"and tempered logprobs: generate it again with one generate.logprobs"
            )

    def reject(self, where: str, metadata: dict[str, Any], rejected: SampleRejected) -> None:
        """Leave a sample out of the parquet, listed with its reason (or fail under `strict`)."""
        if self.strict:
            raise strict_error(rejected)
        if self.figures is not None:
            self.figures.drop_row()
        self.summary.rejected += 1
        self.summary.rejected_by_reason[rejected.kind] = self.summary.rejected_by_reason.get(rejected.kind, 0) + 1
        self.rejects.append({"record": self.records_seen - 1, "where": where, "sample_idx": metadata.get("sample_idx"),
                             "kind": rejected.kind, "reason": rejected.reason})

    def accept(self, row: OutRow) -> bool:
        """Whether a converted row is written (False: below convert.min_memory_gain, counted); a written row's
        figures are committed now, before the next record's are counted."""
        if self.selection is not None and not self.selection.keeps(row.metadata.memory_gain):
            self.summary.left_out_low_gain += 1
            if self.figures is not None:
                self.figures.leave_out(row.metadata.sample_idx)
            return False
        if self.figures is not None:
            self.figures.add_row(row)
        return True

    def encode_texts(self, texts: list[str]) -> list[np.ndarray]:
        """Token ids of system/user texts without special tokens; one batched call for the new ones."""
        new = list(dict.fromkeys(t for t in texts if t not in self._text_ids))
        if new and len(self._text_ids) + len(new) > TEXT_MEMO_SIZE:
            # Clearing drops texts counted as cached above: everything asked for must be encoded now.
            self._text_ids.clear()
            new = list(dict.fromkeys(texts))
        if new:
            for text, ids in zip(new, self.tokenizer.encode_batch(new)):
                self._text_ids[text] = np.asarray(ids, dtype=np.int64)
        return [self._text_ids[t] for t in texts]

    def finish_row(self, out: list[OutMessage], metadata: dict[str, Any], eot_appended: bool, system_prompt: Any, kind: Any) -> OutRow:
        """The row-level columns of a converted record (its texts' ids are filled in by the caller)."""
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

    # ------------------------------------------------------------------------------------------- ids

    def _resolve(self, fields: dict[str, Any]) -> np.ndarray:
        """Ids of entries (token, token_id, bytes columns): a given id as it is (outside the vocabulary:
        OUT_OF_RANGE_ID), else from the token string and bytes."""
        exact = fields["token_id"]
        n = len(exact)
        if exact.null_count == n:
            return self._string_ids(fields["token"], self._bytes_column(fields["bytes"], n))
        given = exact.drop_null().to_numpy(zero_copy_only=False).astype(np.int64, copy=True)
        given[(given < 0) | (given >= self.resolver.limit)] = OUT_OF_RANGE_ID
        if exact.null_count == 0:
            return given
        ids = self._string_ids(fields["token"], self._bytes_column(fields["bytes"], n))
        ids[exact.is_valid().to_numpy(zero_copy_only=False)] = given
        return ids

    @staticmethod
    def _bytes_column(raw: Any, n: int) -> Any:
        """The `bytes` lists as one binary value per entry, or None when no entry has any. Null, [] and a
        list that is not all 0..255 are empty: the string alone decides, as for an entry without bytes."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if raw.null_count == n:
            return None
        lengths, offsets, values = _list_parts(raw)
        octets = (values if values.null_count == 0 else values.fill_null(-1)).to_numpy(zero_copy_only=False)
        bad = (octets < 0) | (octets > 255)
        if bad.any():
            lengths = np.maximum(lengths, 0)
            bad_entry = segment_sums(bad.astype(np.int64), offsets) > 0
            octets = octets[np.repeat(~bad_entry, lengths)]
            offsets = offsets_of(np.where(bad_entry, 0, lengths))
        if offsets[-1] > np.iinfo(np.int32).max:
            raise Unconvertible("bytes beyond 2 GiB in one block")
        column = pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(octets.astype(np.uint8))])
        return column if pc.max(pc.binary_length(column)).as_py() else None

    def _string_ids(self, tokens: Any, raws: Any) -> np.ndarray:
        """Ids from token strings (and bytes): each distinct key is resolved once per file, in Python; the
        per-entry look-up is arrow's hash join (`index_in`) against every key seen so far. An entry with
        no string is read from its bytes alone (rare: done one by one)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        missing_token = tokens.is_null().to_numpy(zero_copy_only=False) if tokens.null_count else None
        if missing_token is not None:
            tokens = tokens.fill_null("")
        if raws is None:
            keys, kind = tokens, "string"
        else:
            # token UTF-8, 0xFF (never in UTF-8), bytes: one binary key per (token, bytes) pair.
            keys, kind = pc.binary_join_element_wise(tokens.cast(pa.binary()), raws, b"\xff"), "binary"
        known, known_ids = self._known.get(kind, (pa.array([], type=keys.type), np.empty(0, dtype=np.int64)))
        position = pc.index_in(keys, value_set=known)
        if position.null_count:
            new = pc.unique(keys.filter(position.is_null())).to_pylist()
            resolve = self.resolver.resolve
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
        ids = known_ids[position.to_numpy(zero_copy_only=False)]
        if missing_token is not None:
            for i in np.flatnonzero(missing_token):
                raw = raws[int(i)].as_py() if raws is not None else None
                ids[i] = self.resolver.resolve(None, list(raw) if raw else None)
        return ids

    # ----------------------------------------------------------------------------------------- block

    def convert(self, table: Any, metadata: list[dict[str, Any]], wheres: list[str]) -> list[OutRow | SampleRejected | None]:
        """Per record of the block: its row, the rejection that kept it out, or None (below
        convert.min_memory_gain). Raises `Unconvertible` before counting anything when the block needs the
        record-by-record check, UserError for a mixed logprob contract or a rejection under `strict`."""
        from memdistill.convert.assemble import assemble_block  # it imports this module

        return assemble_block(self, self._prepare(table), metadata, wheres)

    def _prepare(self, table: Any) -> Prepared:
        import pyarrow as pa

        messages = table.column("messages").chunk(0) if table.column("messages").num_chunks else None
        if messages is None or messages.null_count:
            raise Unconvertible("messages")
        row_lengths, row_offsets, message_struct = _list_parts(messages)
        if (row_lengths <= 0).any():
            raise Unconvertible("empty messages")
        message = _fields(message_struct)
        roles = message["role"].to_pylist()
        if None in roles:
            raise Unconvertible("role")
        given_lengths, given_offsets, given_values = _list_parts(message["token_ids"])
        if given_values.null_count:
            raise Unconvertible("token_ids")
        # A null logprobs object makes its content null too (flatten merges the parent's validity).
        item_lengths, item_offsets, item_struct = _list_parts(message["logprobs"].flatten()[0])
        item = _fields(item_struct)
        alt_counts, _, alt_struct = _list_parts(item["top_logprobs"])
        alt = _fields(alt_struct)
        # Chosen tokens and alternatives resolve in one pass (the chosen are mostly among the alternatives).
        ids = self._resolve({name: pa.concat_arrays([item[name], alt[name]]) for name in _ENTRY_FIELDS if name != "logprob"})
        return Prepared(
            row_offsets=row_offsets,
            roles=roles,
            contents=message["content"].to_pylist(),
            given_lengths=given_lengths,
            given_offsets=given_offsets,
            given_values=given_values.to_numpy(zero_copy_only=False).astype(np.int64, copy=False),
            item_lengths=item_lengths,
            item_offsets=item_offsets,
            alt_counts=np.maximum(alt_counts, 0),  # null top_logprobs: no alternatives
            chosen_ids=ids[: len(item_struct)],
            chosen_lp=_floats(item["logprob"]),
            chosen_exact=_exact_column(item["token_id"], item["token"]),
            alt_ids=ids[len(item_struct):],
            alt_lp=_floats(alt["logprob"]),
            system_prompts=table.column("system_prompt").to_pylist(),
            types=table.column("type").to_pylist(),
        )
