"""The record-by-record check behind convert's engine: for a block the engine cannot take, it finds the first
thing wrong, in file order, and words it as one UserError naming the file, line and field; or, when nothing
is wrong, hands back the block's records normalised into what the engine reads (its one schema, values
that need a rule of their own made plain). It converts nothing: the engine converts the block it returns.

What normalising does, each kept by the engine exactly as the record meant it: `logprobs` given as a bare
list becomes {"content": [...]}; a token that is not a string, or `bytes` that are not a list of 0..255,
read as absent; a system_prompt or type that is not a string becomes its text; the token_ids and logprobs
of a message that is not the assistant's are dropped (they are never read); and a record stops after its
first rejected message (the rest of it is never read).
"""

from __future__ import annotations

from itertools import chain, repeat
from typing import Any

import numpy as np

from memdistill.convert.engine import POSITIVE_LOGPROB_TOLERANCE, Engine
from memdistill.convert.mass import MISSING_ID
from memdistill.convert.outcomes import SampleRejected, no_logprobs, not_decoding, not_recovered, strict_error
from memdistill.convert.records import INPUT_SCHEMA, Block
from memdistill.convert.token_ids import OUT_OF_RANGE_ID, TOKEN_ID_PREFIX
from memdistill.core.errors import UserError


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
    return array


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


def _id_field(where: str, t: int, column: int | None) -> str:
    base = f"{where}.logprobs.content[{t}]"
    return f"{base}.token_id" if column is None else f"{base}.top_logprobs[{column}].token_id"


def first_duplicate(row_of: np.ndarray, ids: np.ndarray, ignore: int = MISSING_ID) -> int:
    """Index (into the flat arrays) of the first entry whose id already appeared in the same row, or -1."""
    if ids.size < 2:
        return -1
    order = np.lexsort((np.arange(ids.size), ids, row_of))
    same = (row_of[order][1:] == row_of[order][:-1]) & (ids[order][1:] == ids[order][:-1]) & (ids[order][1:] != ignore)
    if not same.any():
        return -1
    return int(order[1:][same].min())


def _plain_entry(entry: dict[str, Any]) -> dict[str, Any]:
    token, raw, token_id = entry.get("token"), entry.get("bytes"), entry.get("token_id")
    plain_bytes = isinstance(raw, list) and all(type(b) is int and 0 <= b <= 255 for b in raw)
    return {"token": token if isinstance(token, str) else None, "logprob": entry.get("logprob"),
            "token_id": token_id if type(token_id) is int else None, "bytes": raw if plain_bytes else None}


class RecordChecker:
    """Checks records one by one with the engine's tokenizer and state (its logprob contract so far)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.resolver = engine.resolver

    def normalised(self, block: Block) -> Block:
        """The block's records checked (the first error raised) and normalised, as a block the engine takes."""
        import pyarrow as pa

        records = [self.record(raw, where) for where, raw in block.raw_records()]
        table = pa.Table.from_pylist([record for record, _ in records], schema=pa.schema(list(INPUT_SCHEMA)[:3]))
        return Block(table, [metadata for _, metadata in records], block.wheres)

    def record(self, raw: Any, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """(the record normalised, its metadata object), or the UserError of its first bad field."""
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
        self.engine.check_logprobs_mode(metadata, where)
        out: list[dict[str, Any]] = []
        for number, message in enumerate(messages):
            field = f"{where}: messages[{number}]"
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise UserError(f"{field}: expected an object with a 'role'")
            content = message.get("content")
            if content is not None and not isinstance(content, str):
                raise UserError(f"{field}.content: expected a string")
            if message["role"] != "assistant":
                out.append({"role": message["role"], "content": content})
                continue
            plain, rejected = self.assistant(message, field)
            out.append(plain)
            if rejected is not None:
                if self.engine.strict:
                    raise strict_error(rejected)
                break
        system_prompt, kind = raw.get("system_prompt"), raw.get("type")
        return {"messages": out, "system_prompt": None if system_prompt is None else str(system_prompt),
                "type": str(kind) if kind else None}, metadata

    def assistant(self, message: dict[str, Any], where: str) -> tuple[dict[str, Any], SampleRejected | None]:
        """The assistant message normalised, and the rejection it earns (None: converted); or its error."""
        content = message.get("content") or ""
        items = _items_of(message, where)
        given = message.get("token_ids")
        if not isinstance(given, list):
            given = None  # not a list of ids: no token_ids
        elif not all(type(x) is int for x in given):
            index, value = next((i, v) for i, v in enumerate(given) if type(v) is not int)
            raise UserError(f"{where}.token_ids[{index}]: id {value!r} is outside the vocabulary [0, {self.resolver.limit}) of {self.resolver.tokenizer.name}")
        plain: dict[str, Any] = {"role": "assistant", "content": message.get("content"), "token_ids": given, "logprobs": None}
        if items is None:
            return plain, no_logprobs(where, self.engine.strict)
        try:
            # map(dict.get, ...) walks the entries in C: no Python frame per top-k entry.
            alternatives = [alts or [] for alts in map(dict.get, items, repeat("top_logprobs"))]
            counts = np.fromiter(map(len, alternatives), dtype=np.int64, count=len(items))
            flat = list(chain.from_iterable(alternatives))
            alt_values = list(map(dict.get, flat, repeat("logprob")))
        except (AttributeError, TypeError):
            _explain_bad_items(items, where)
            raise
        starts = np.concatenate([[0], np.cumsum(counts)])

        def alt_field(index: int) -> str:
            t = int(np.searchsorted(starts, index, side="right") - 1)
            return f"{where}.logprobs.content[{t}].top_logprobs[{index - starts[t]}].logprob"

        _number_array(alt_values, alt_field)
        _number_array(list(map(dict.get, items, repeat("logprob"))), lambda t: f"{where}.logprobs.content[{t}].logprob")
        plain["logprobs"] = {"content": [{**_plain_entry(item), "top_logprobs": [_plain_entry(a) for a in alts]} for item, alts in zip(items, alternatives)]}
        rejected = self._ids(items, flat, counts, given, content, where)
        return plain, rejected

    def _ids(self, items: list[dict[str, Any]], flat: list[dict[str, Any]], counts: np.ndarray, given: list[int] | None,
             content: str, where: str) -> SampleRejected | None:
        """The id rules of one message with logprobs: errors raised, a rejection returned."""
        resolver, T = self.resolver, len(items)
        limit, name = resolver.limit, resolver.tokenizer.name
        alt_ids = resolver.resolve_entries(flat)
        row_of = np.repeat(np.arange(T, dtype=np.int64), counts)
        row_starts = np.cumsum(counts) - counts
        bad = np.flatnonzero(alt_ids == OUT_OF_RANGE_ID)
        if bad.size:
            t = int(row_of[bad[0]])
            raise UserError(f"{_id_field(where, t, int(bad[0] - row_starts[t]))}: id outside the vocabulary [0, {limit}) of {name}")
        duplicate = first_duplicate(row_of, alt_ids)
        if duplicate >= 0:
            t = int(row_of[duplicate])
            raise UserError(f"{_id_field(where, t, int(duplicate - row_starts[t]))}: id {int(alt_ids[duplicate])} appears twice in one top-k row")
        if given is not None:
            index = next((i for i, value in enumerate(given) if not 0 <= value < limit), -1)
            if index >= 0:
                raise UserError(f"{where}.token_ids[{index}]: id {given[index]} is outside the vocabulary [0, {limit}) of {name}")
            if not (len(given) == T or (len(given) == T + 1 and given[-1] in self.engine.eot_ids)):
                raise UserError(f"{where}: token_ids has {len(given)} ids but logprobs.content has {T} tokens")
            return None
        chosen = resolver.resolve_entries(items)
        bad = np.flatnonzero(chosen == OUT_OF_RANGE_ID)
        if bad.size:
            raise UserError(f"{_id_field(where, int(bad[0]), None)}: id outside the vocabulary [0, {limit}) of {name}")
        unrecovered = np.flatnonzero(chosen == MISSING_ID)
        if unrecovered.size:
            return not_recovered(where, int(unrecovered[0]), int(unrecovered.size), T)
        if not all(_exact_entry(item) for item in items):
            decoded = resolver.tokenizer.decode_text(chosen.tolist())
            if decoded is not None and decoded != content:
                return not_decoding(where, decoded, content)
        return None
