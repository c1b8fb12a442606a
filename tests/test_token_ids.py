"""Recovering exact ids from token strings (issue 6 order: token_id:N, vocabulary entry, bytes, one-id encoding)."""

from __future__ import annotations

import numpy as np
import pytest

from memdistill.convert.mass import MISSING_ID
from memdistill.convert.token_ids import (
    OUT_OF_RANGE_ID,
    TextTokenizer,
    TokenIdResolver,
    byte_to_unicode,
    load_text_tokenizer,
    vocabulary_bytes,
)


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


def test_decoded_text_wins_over_the_lone_byte_vocabulary_entry(resolver: TokenIdResolver) -> None:
    # "é" is the vocabulary entry of the single byte E9 *and* the decoded text of the bytes C3 A9 (issue 12:
    # llama.cpp sends "é" with no bytes; reading the vocabulary entry wrote the lone byte's id).
    text_id = resolver.byte_ids["é".encode()]
    assert resolver.tokenizer.decode([text_id]) == "é"
    assert resolver.tokenizer.decode([resolver.vocab["é"]]) == "\ufffd"
    assert resolver.resolve("é") == text_id
    assert resolver.resolve("é", list("é".encode())) == text_id


def test_every_id_recovered_from_a_string_decodes_back_to_it(resolver: TokenIdResolver) -> None:
    """Real SmolLM2 vocabulary: accented, CJK and emoji tokens sent as decoded text without bytes (llama.cpp)."""
    decode = resolver.tokenizer.decode
    texts = {}
    for token_id in range(resolver.limit):
        text = decode([token_id])
        if text and "\ufffd" not in text and any(ord(c) > 127 for c in text):
            texts.setdefault(text, token_id)
    assert len(texts) > 500
    samples = [t for t in texts if any(0x4E00 <= ord(c) <= 0x9FFF for c in t)][:50]  # CJK
    samples += [t for t in texts if any(ord(c) >= 0x1F300 for c in t)][:50]  # emoji
    samples += [t for t in texts if any(c in "éèüñçåø" for c in t)][:100]  # accented
    assert len(samples) > 30
    ids = resolver.resolve_entries([{"token": text} for text in texts])
    recovered = ids != MISSING_ID
    assert recovered.mean() > 0.99
    for text, token_id in zip(texts, ids.tolist()):
        if token_id != MISSING_ID:
            assert decode([token_id]) == text
    for text in samples:
        assert decode([resolver.resolve(text)]) == text
    # A string no single id decodes to is not recovered, never guessed.
    assert resolver.resolve("Jos\u00e9 \U0001F642") == MISSING_ID
    # U+FFFD without bytes is any half character; with its bytes it is the literal replacement-char token.
    assert resolver.resolve("\ufffd") == MISSING_ID
    assert resolver.tokenizer.decode([resolver.resolve("\ufffd", list("\ufffd".encode()))]) == "\ufffd"
    assert resolver.resolve("") == MISSING_ID


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
    assert resolver.resolve_entries(mixed).tolist() == [5, resolver.vocab["Ġthe"], OUT_OF_RANGE_ID]
    for bad in (-5, -1, 999999, 2**70):
        assert resolver.resolve_entries([{"token": "x", "token_id": bad}]).tolist() == [OUT_OF_RANGE_ID]
        assert resolver.resolve_entries([{"token": "x", "token_id": 3}, {"token": "y", "token_id": bad}]).tolist()[1] == OUT_OF_RANGE_ID
    assert resolver.resolve_entries([]).tolist() == []
    assert resolver.resolve_entries([{"token": ["not", "a", "string"]}, {"token": None}]).tolist() == [MISSING_ID, MISSING_ID]


def test_every_vocabulary_id_round_trips(resolver: TokenIdResolver) -> None:
    """Raw BPE strings of whole characters, and decoded text with bytes, give back every id of the vocabulary."""
    by_bytes = vocabulary_bytes(resolver.vocab)
    pieces = sorted(resolver.vocab.items(), key=lambda item: item[1])
    whole = [(piece, token_id) for piece, token_id in pieces if "\ufffd" not in resolver.tokenizer.decode([token_id])]
    raw_entries = [{"token": piece} for piece, _ in whole]
    got_raw = resolver.resolve_entries(raw_entries)
    expected = np.array([token_id for _, token_id in whole])
    # A raw piece that is also some other token's decoded text reads as that text (the text reading wins).
    assert (got_raw == expected).mean() > 0.99
    ordinary = [(piece, token_id) for piece, token_id in pieces if all(c in set(byte_to_unicode().values()) for c in piece)]
    decoded_entries = [dict(zip(("token", "bytes"), decoded(piece))) for piece, _ in ordinary]
    got = resolver.resolve_entries(decoded_entries)
    # Twice: the second pass runs on the memo and must answer the same.
    np.testing.assert_array_equal(resolver.resolve_entries(decoded_entries), got)
    want = np.array([by_bytes[bytes(entry["bytes"])] for entry in decoded_entries])
    np.testing.assert_array_equal(got, want)
    assert (got == np.array([token_id for _, token_id in ordinary])).mean() > 0.999


def test_bare_tokenizer_encodes_like_transformers() -> None:
    from memdistill.core.models import load_tokenizer

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
