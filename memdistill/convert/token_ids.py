"""Recovering exact vocabulary ids from the token strings a teacher server returns.

Order: `token_id:N` strings; the `bytes` field mapped through the byte-level vocabulary (exact); then the
string itself, and an id recovered from a string must round-trip (issue 12): the decoded-text reading
(the id whose `decode([id])` equals the string: its UTF-8 bytes, or a one-id encoding) first, then the raw
vocabulary entry (BPE pieces such as "Ġthe", as Tokasaurus sends them) only when that piece decodes to
whole characters. Anything else is `MISSING_ID`: never a guess.

Why the order: byte-level alphabets reuse Latin-1 characters, so the decoded text "é" (bytes C3 A9, id
2756 in SmolLM2) is also the vocabulary entry of the lone byte E9 (id 180), which decodes to U+FFFD. A
server that sends no `bytes` (llama.cpp) means the text; reading the vocabulary entry would write 180.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np

from memdistill.convert.mass import MISSING_ID
from memdistill.core import models

TOKEN_ID_PREFIX = "token_id:"
# An exact id given in the input (a `token_id` field) outside [0, vocab_size): an input error, not a miss.
OUT_OF_RANGE_ID = -2
REPLACEMENT_CHAR = "\ufffd"


@functools.lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """The byte-level BPE alphabet (GPT-2 style): every byte maps to one printable character."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {byte: chr(code) for byte, code in zip(printable, codes)}


def vocabulary_bytes(vocab: dict[str, int]) -> dict[bytes, int]:
    """Raw bytes -> id for every byte-level vocabulary entry (special tokens map by their UTF-8 text)."""
    # One str.translate per piece (C speed): alphabet characters become the Latin-1 character of their
    # byte; every other character below U+0100 becomes U+0100, so a piece is all-alphabet exactly when
    # its translation encodes as Latin-1.
    table = {code: 0x100 for code in range(0x100)}
    table.update({ord(char): byte for byte, char in byte_to_unicode().items()})
    out: dict[bytes, int] = {}
    for piece, token_id in vocab.items():
        try:
            raw = piece.translate(table).encode("latin-1")
        except UnicodeEncodeError:
            raw = piece.encode("utf-8")
        # Two entries with the same bytes: keep the lower id, so the answer does not depend on dict order.
        if raw not in out or token_id < out[raw]:
            out[raw] = token_id
    return out


def parse_token_id(token: str, limit: int) -> int | None:
    """`token_id:N` -> N (MISSING_ID when out of range); None when the string is not of that form."""
    if not token.startswith(TOKEN_ID_PREFIX):
        return None
    digits = token[len(TOKEN_ID_PREFIX):]
    if not digits.isdigit():
        return MISSING_ID
    value = int(digits)
    return value if value < limit else MISSING_ID


@dataclass(frozen=True)
class TextTokenizer:
    """What convert needs from a tokenizer: vocabulary, size, end-of-sequence id, batch encoding.

    Built from a bare `tokenizers` file when there is one (loads in a fraction of a second and a few MB),
    else from a transformers tokenizer (hub ids), so the two give the same ids.
    """

    name: str
    vocab: dict[str, int]
    size: int
    eos_token_id: int | None
    encode_batch: Callable[[list[str]], list[list[int]]]
    # An encoding that falls back to the unknown token is not a match.
    unk_token_id: int | None = None
    # ids -> text (special tokens kept); None: ids recovered from strings cannot be checked, so none are.
    decode: Callable[[list[int]], str] | None = None
    # the same for many id lists in one call (the tokenizer's own batch decode)
    decode_batch: Callable[[list[list[int]]], list[str]] | None = None
    # Every id of the model's generation_config.json `eos_token_id` (a list for Llama-3.1).
    generation_eos_ids: tuple[int, ...] = ()
    special_ids: frozenset[int] = frozenset()

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    @functools.cached_property
    def byte_ids(self) -> dict[bytes, int]:
        """Raw bytes -> id of every byte-level vocabulary entry (vocabulary_bytes), built once per tokenizer."""
        return vocabulary_bytes(self.vocab)

    def decode_text(self, ids: Sequence[int]) -> str | None:
        """Text of `ids` without special tokens (what a server puts in `content`); None without a decoder."""
        if self.decode is None:
            return None
        return self.decode([int(i) for i in ids if int(i) not in self.special_ids])


def generation_eos_ids(folder: Path) -> tuple[int, ...]:
    """`eos_token_id` of a model folder's generation_config.json, as a tuple (it may be an int or a list)."""
    config = folder / "generation_config.json"
    if not config.is_file():
        return ()
    try:
        value = json.loads(config.read_text(encoding="utf-8")).get("eos_token_id")
    except (ValueError, AttributeError):
        return ()
    values = value if isinstance(value, list) else [value]
    return tuple(v for v in values if type(v) is int)


def text_tokenizer_from_transformers(tokenizer: Any, name: str = "") -> TextTokenizer:
    vocab = tokenizer.get_vocab()
    size = max(len(tokenizer), max(vocab.values(), default=-1) + 1)
    encode = lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"]  # noqa: E731
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)  # noqa: E731
    eos: tuple[int, ...] = ()
    try:
        from transformers import GenerationConfig

        configured = GenerationConfig.from_pretrained(getattr(tokenizer, "name_or_path", "") or name).eos_token_id
        eos = tuple(configured if isinstance(configured, list) else [configured] if isinstance(configured, int) else [])
    except Exception:  # noqa: BLE001 - a tokenizer-only repository has no generation config; eos_token_id is enough
        pass
    special = frozenset(int(i) for i in getattr(tokenizer, "all_special_ids", []))
    decode_batch = lambda lists: tokenizer.batch_decode(lists, skip_special_tokens=False, clean_up_tokenization_spaces=False)  # noqa: E731
    return TextTokenizer(name or getattr(tokenizer, "name_or_path", ""), vocab, size, tokenizer.eos_token_id, encode,
                         tokenizer.unk_token_id, decode, decode_batch, eos, special)


def text_tokenizer_from_folder(folder: Path, name: str = "") -> TextTokenizer:
    """A folder holding tokenizer.json (and optionally tokenizer_config.json naming the eos token)."""
    import tokenizers

    backend = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    vocab = backend.get_vocab(with_added_tokens=True)
    eos_name: Any = None
    config = folder / "tokenizer_config.json"
    if config.is_file():
        eos_name = json.loads(config.read_text(encoding="utf-8")).get("eos_token")
        if isinstance(eos_name, dict):
            eos_name = eos_name.get("content")
    eos = vocab.get(eos_name) if isinstance(eos_name, str) else None
    size = max(backend.get_vocab_size(with_added_tokens=True), max(vocab.values(), default=-1) + 1)

    def encode(texts: list[str]) -> list[list[int]]:
        return [encoding.ids for encoding in backend.encode_batch(texts, add_special_tokens=False)]

    def decode(ids: list[int]) -> str:
        return backend.decode(ids, skip_special_tokens=False)

    def decode_batch(lists: list[list[int]]) -> list[str]:
        return backend.decode_batch(lists, skip_special_tokens=False)

    unk = getattr(backend.model, "unk_token", None)
    special = frozenset(token_id for token_id, token in backend.get_added_tokens_decoder().items() if token.special)
    return TextTokenizer(name or str(folder), vocab, size, eos, encode, vocab.get(unk) if isinstance(unk, str) else None,
                         decode, decode_batch, generation_eos_ids(folder), special)


@functools.lru_cache(maxsize=4)
def load_text_tokenizer(name_or_path: str) -> TextTokenizer:
    """The embedded teacher's name, a local tokenizer folder, or a hub id (through transformers); loaded once
    per process (a sharded convert converts each part with the same tokenizer)."""
    if models.is_embedded(name_or_path):
        # The embedded tokenizer is materialised once into a transformers folder; read its tokenizer.json
        # directly, which keeps torch and transformers out of the convert process.
        tokenizer = text_tokenizer_from_folder(models.embedded_tokenizer_dir(), name_or_path)
        # The tokenizer folder has no generation config; the model's copy has one once it was materialised
        # (its end-of-turn, <|im_end|>, is in END_OF_TURN_TOKENS either way).
        return dataclasses.replace(tokenizer, generation_eos_ids=generation_eos_ids(models.embedded_model_dir_if_present()))
    folder = Path(name_or_path)
    if folder.is_dir() and (folder / "tokenizer.json").is_file():
        return text_tokenizer_from_folder(folder, name_or_path)
    return text_tokenizer_from_transformers(models.load_tokenizer(name_or_path), name_or_path)


def as_text_tokenizer(tokenizer: Any) -> TextTokenizer:
    return tokenizer if isinstance(tokenizer, TextTokenizer) else text_tokenizer_from_transformers(tokenizer)


class TokenIdResolver:
    """Maps token strings to ids using one tokenizer; memoised, since a dataset repeats its tokens."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = as_text_tokenizer(tokenizer)
        self.vocab = self.tokenizer.vocab
        self.limit = self.tokenizer.size
        self.byte_ids = self.tokenizer.byte_ids
        # token string -> id, and the `bytes` field it came with: an entry hits only with the same bytes.
        self._id_of: dict[str, int] = {}
        self._raw_of: dict[str, Any] = {}
        self._strings: dict[str, int] = {}
        unk = self.tokenizer.unk_token_id
        self._unk_text = next((piece for piece, token_id in self.vocab.items() if token_id == unk), None) if unk is not None else None
        self._decoded: dict[int, str | None] = {}

    def text_of(self, token_id: int) -> str | None:
        """`decode([token_id])`, memoised; None when the tokenizer has no decoder."""
        if token_id not in self._decoded:
            decode = self.tokenizer.decode
            self._decoded[token_id] = decode([token_id]) if decode is not None else None
        return self._decoded[token_id]

    def round_trips(self, token_id: int, token: str) -> bool:
        text = self.text_of(token_id)
        return text is None or text == token

    def from_bytes(self, raw: Sequence[int] | None) -> int:
        if not raw:
            return MISSING_ID
        try:
            return self.byte_ids.get(bytes(raw), MISSING_ID)
        except (TypeError, ValueError):  # not a list of 0..255
            return MISSING_ID

    def resolve(self, token: str | None, raw: Sequence[int] | None = None) -> int:
        """Exact id for one entry's `token` string and optional `bytes`."""
        if raw:
            if isinstance(token, str) and token.startswith(TOKEN_ID_PREFIX):
                return self.resolve_string(token)
            found = self.from_bytes(raw)
            if found != MISSING_ID:
                return found
        if not isinstance(token, str):
            return MISSING_ID
        return self.resolve_string(token)

    def resolve_string(self, token: str) -> int:
        cached = self._strings.get(token)
        if cached is None:
            cached = self._strings[token] = self._resolve_uncached(token)
        return cached

    def _learn(self, entry: dict[str, Any]) -> int:
        token_id = entry.get("token_id")
        if token_id is not None:
            # A given id that is not an int in range (JSON readers turn 2**70 into a float) is an input error.
            return token_id if type(token_id) is int and 0 <= token_id < self.limit else OUT_OF_RANGE_ID
        token, raw = entry.get("token"), entry.get("bytes")
        found = self.resolve(token, raw)
        if isinstance(token, str):
            self._id_of[token] = found
            self._raw_of[token] = raw
        return found

    def resolve_entries(self, entries: Sequence[dict[str, Any]]) -> np.ndarray:
        """Ids for top-k entries: an integer `token_id` field is exact; otherwise `token` and `bytes`.

        Vectorised over a message: when every token string was seen before with the same `bytes`, the
        ids are two C-level passes of dict look-ups; otherwise entries resolve (and are learnt) one by
        one. Exact ids outside the tokenizer's vocabulary become MISSING_ID: they mean another tokenizer.
        """
        count = len(entries)
        if count == 0:
            return np.empty(0, dtype=np.int64)
        # map(dict.get, ...) walks the entries in C: no Python frame per entry.
        exact = list(map(dict.get, entries, repeat("token_id")))
        ids = None
        if exact.count(None) == count:
            tokens = list(map(dict.get, entries, repeat("token")))
            raws = list(map(dict.get, entries, repeat("bytes")))
            try:
                found = list(map(self._id_of.get, tokens))
                stored = list(map(self._raw_of.get, tokens))
            except TypeError:  # a token that is not a string
                found = None
            if found is not None:
                redo = [i for i, value in enumerate(found) if value is None] if None in found else []
                if stored != raws:
                    redo += [i for i, (seen, given) in enumerate(zip(stored, raws)) if seen != given]
                for i in redo:
                    found[i] = self._learn(entries[i])
                ids = np.array(found, dtype=np.int64)
        else:
            candidate = np.asarray(exact)
            if candidate.dtype.kind == "i":
                ids = candidate.astype(np.int64, copy=True)
                ids[(ids < 0) | (ids >= self.limit)] = OUT_OF_RANGE_ID
        if ids is None:
            ids = np.fromiter(map(self._learn, entries), dtype=np.int64, count=count)
        return ids

    def _resolve_uncached(self, token: str) -> int:
        parsed = parse_token_id(token, self.limit)
        if parsed is not None:
            return parsed
        if REPLACEMENT_CHAR in token:
            # Without bytes, U+FFFD stands for any partial character (or the literal U+FFFD token): no exact id.
            return MISSING_ID
        # Decoded-text readings first: the id must decode back to exactly this string.
        found = self.byte_ids.get(token.encode("utf-8"))
        if found is not None and self.round_trips(found, token):
            return found
        encoded = self.tokenizer.encode(token) if token else []
        if len(encoded) == 1 and not (encoded[0] == self.tokenizer.unk_token_id and token != self._unk_text):
            if self.round_trips(int(encoded[0]), token):
                return int(encoded[0])
        # A raw vocabulary piece: exact by construction, but only a piece of whole characters is read this way
        # (the lone-byte piece "é" decodes to U+FFFD and is the decoded text of another id).
        found = self.vocab.get(token)
        if found is not None:
            text = self.text_of(found)
            if text is None or REPLACEMENT_CHAR not in text:
                return found
        return MISSING_ID
