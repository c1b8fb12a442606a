"""Recovering exact ids from token strings (issue 6 order: token_id:N, vocabulary entry, bytes, one-id encoding)."""

from __future__ import annotations

import numpy as np
import pytest

from memdistill.logprobs import MISSING_ID
from memdistill.token_ids import TextTokenizer, TokenIdResolver, byte_to_unicode, load_text_tokenizer, vocabulary_bytes


@pytest.fixture(scope="module")
def resolver() -> TokenIdResolver:
    return TokenIdResolver(load_text_tokenizer("smollm2-135m-instruct"))


def fake_tokenizer(vocab: dict[str, int], encodings: dict[str, list[int]] | None = None) -> TextTokenizer:
    encodings = encodings or {}
    return TextTokenizer("fake", vocab, max(vocab.values()) + 1, None, lambda texts: [encodings.get(t, [1, 2]) for t in texts])


def decoded(piece: str) -> tuple[str, list[int]]:
    """What a plain OpenAI server sends for a byte-level vocabulary entry: decoded text and its bytes."""
    to_byte = {char: byte for byte, char in byte_to_unicode().items()}
    raw = bytes(to_byte[char] for char in piece)
    return raw.decode("utf-8", errors="replace"), list(raw)


def test_byte_alphabet_is_a_bijection_over_256_bytes() -> None:
    table = byte_to_unicode()
    assert sorted(table) == list(range(256)) and len(set(table.values())) == 256
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ"


def test_token_id_strings(resolver: TokenIdResolver) -> None:
    assert resolver.resolve("token_id:19") == 19
    assert resolver.resolve(f"token_id:{resolver.limit}") == MISSING_ID
    assert resolver.resolve("token_id:abc") == MISSING_ID
    # The prefix wins over a bytes field (vLLM return_tokens_as_token_ids).
    assert resolver.resolve("token_id:19", [32]) == 19


def test_raw_vocabulary_entry_and_decoded_text_agree(resolver: TokenIdResolver) -> None:
    the = resolver.vocab["Ġthe"]
    assert resolver.resolve("Ġthe") == the
    assert resolver.resolve(" the") == the
    assert resolver.resolve(" the", list(b" the")) == the
    assert resolver.resolve("<|im_end|>") == 2


def test_bytes_decide_between_vocabulary_and_decoded_readings(resolver: TokenIdResolver) -> None:
    # "é" is the vocabulary entry of the single byte E9 *and* the decoded text of the bytes C3 A9.
    assert resolver.resolve("é") == resolver.vocab["é"]
    assert resolver.resolve("é", list("é".encode())) == resolver.byte_ids["é".encode()] != resolver.vocab["é"]


def test_utf8_fragments_resolve_through_their_bytes(resolver: TokenIdResolver) -> None:
    first = resolver.resolve("\ufffd", [0xE2])
    second = resolver.resolve("\ufffd", [0xA0])
    assert first != second and MISSING_ID not in (first, second)
    # The memo is keyed by the string, but an entry only hits with the same bytes.
    ids = resolver.resolve_entries([{"token": "\ufffd", "bytes": [0xE2]}, {"token": "\ufffd", "bytes": [0xA0]}, {"token": "\ufffd", "bytes": [0xE2]}])
    assert ids.tolist() == [first, second, first]


def test_one_id_encoding_is_the_last_resort() -> None:
    resolver = TokenIdResolver(fake_tokenizer({"a": 0, "b": 1, "c": 2, "Ġx": 3}, {"weird": [2]}))
    assert resolver.resolve("weird") == 2
    assert resolver.resolve("unknown") == MISSING_ID  # encodes to two ids
    assert resolver.resolve(None) == MISSING_ID
    assert resolver.resolve(" x") == 3


def test_resolve_entries_prefers_exact_ids_and_checks_their_range(resolver: TokenIdResolver) -> None:
    exact = [{"token": "whatever", "token_id": 5}, {"token": "x", "token_id": 7}]
    assert resolver.resolve_entries(exact).tolist() == [5, 7]
    mixed = [{"token": " the", "token_id": 5}, {"token": " the"}, {"token": "x", "token_id": resolver.limit + 3}]
    assert resolver.resolve_entries(mixed).tolist() == [5, resolver.vocab["Ġthe"], MISSING_ID]
    assert resolver.resolve_entries([]).tolist() == []
    assert resolver.resolve_entries([{"token": ["not", "a", "string"]}, {"token": None}]).tolist() == [MISSING_ID, MISSING_ID]


def test_every_vocabulary_id_round_trips(resolver: TokenIdResolver) -> None:
    """Raw BPE strings, and decoded text with bytes, give back every id of the vocabulary."""
    by_bytes = vocabulary_bytes(resolver.vocab)
    pieces = sorted(resolver.vocab.items(), key=lambda item: item[1])
    raw_entries = [{"token": piece} for piece, _ in pieces]
    expected = np.array([token_id for _, token_id in pieces])
    np.testing.assert_array_equal(resolver.resolve_entries(raw_entries), expected)
    ordinary = [(piece, token_id) for piece, token_id in pieces if all(c in set(byte_to_unicode().values()) for c in piece)]
    decoded_entries = [dict(zip(("token", "bytes"), decoded(piece))) for piece, _ in ordinary]
    got = resolver.resolve_entries(decoded_entries)
    # Twice: the second pass runs on the memo and must answer the same.
    np.testing.assert_array_equal(resolver.resolve_entries(decoded_entries), got)
    want = np.array([by_bytes[bytes(entry["bytes"])] for entry in decoded_entries])
    np.testing.assert_array_equal(got, want)
    assert (got == np.array([token_id for _, token_id in ordinary])).mean() > 0.999


def test_bare_tokenizer_encodes_like_transformers() -> None:
    from memdistill.models import load_tokenizer

    texts = ["Hello world!", "  spaced\n\nlines\tand tabs", "émoji 🙂 and 数字 42", ""]
    fast = load_text_tokenizer("smollm2-135m-instruct")
    slow = load_tokenizer("smollm2-135m-instruct")
    assert fast.encode_batch(texts) == [slow.encode(t, add_special_tokens=False) for t in texts]
    assert fast.eos_token_id == slow.eos_token_id
    assert fast.vocab == slow.get_vocab()


def test_an_encoding_that_falls_back_to_unknown_is_no_match() -> None:
    tokenizer = TextTokenizer("fake", {"<unk>": 0, "a": 1}, 2, None, lambda texts: [[0] for _ in texts], unk_token_id=0)
    resolver = TokenIdResolver(tokenizer)
    assert resolver.resolve("zebra") == MISSING_ID
    assert resolver.resolve("<unk>") == 0
