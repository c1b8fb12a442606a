"""Redaction on RE2: same replacements as Python's re for the patterns both accept, clear errors otherwise."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memdistill.core.errors import UserError
from memdistill.snapshots.redact import REDACTION_MARKER, Redactor, compile_linear, replace_all

EMAIL = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"
KEY = r"sk-[A-Za-z0-9_-]{16,}"
# Characters that make e-mail-like and key-like runs likely, plus some that are several UTF-8 bytes long.
ALPHABET = st.sampled_from(list("ab.@-_sk xyZ9") + ["é", "漢", "\U0001f600", "\n"])


@settings(max_examples=300, deadline=None)
@given(text=st.text(ALPHABET, max_size=80), pattern=st.sampled_from([EMAIL, KEY, r"a+b", r"[xy]{2,}", r"\bab\b"]))
def test_replacements_match_python_re(text: str, pattern: str) -> None:
    # Python's re is the oracle: for ASCII classes both engines pick the same leftmost-first matches.
    expected = re.subn(pattern, REDACTION_MARKER, text, flags=re.ASCII)
    assert replace_all(compile_linear(pattern), text, REDACTION_MARKER) == expected


def test_default_patterns_in_order() -> None:
    redactor = Redactor.compile([EMAIL, KEY])
    text, count = redactor.text("mail ada@example.com or use sk-abcdefghijklmnopqrst; é漢 stays")
    assert (text, count) == ("mail [REDACTED] or use [REDACTED]; é漢 stays", 2)
    assert redactor.content({"a": ["x@y.org", {"b": "none"}], "n": 3}) == ({"a": ["[REDACTED]", {"b": "none"}], "n": 3}, 1)


def test_long_unbroken_word_is_left_as_it_is() -> None:
    word = "a" * 300_000  # the shape that made Python's re quadratic
    assert Redactor.compile([EMAIL, KEY]).text(word) == (word, 0)
    assert Redactor.compile([EMAIL]).text(word + "@b.cc") == (REDACTION_MARKER, 1)


def test_lone_surrogates_survive() -> None:
    assert Redactor.compile([EMAIL]).text("\ud800 a@b.cc \udfff") == ("\ud800 [REDACTED] \udfff", 1)


def test_empty_matches_are_stepped_over() -> None:
    assert replace_all(compile_linear(r"\b"), "ab cd é", REDACTION_MARKER) == ("ab cd é", 0)


@pytest.mark.parametrize(
    ("patterns", "message"),
    [
        ([r"(a)\1"], r"redact_patterns: '\(a\)\\1' is not a valid regular expression for the linear-time engine RE2 \(invalid escape sequence"),
        ([r"(?<=x)y"], r"not a valid regular expression for the linear-time engine RE2"),
        ([r"(unclosed"], r"not a valid regular expression"),
        ([r"x*"], r"'x\*' matches the empty string"),
        ("sk-.*", r"expected a list of regular expressions"),
        ([5], r"expected strings, got 5"),
    ],
)
def test_bad_patterns(patterns: object, message: str, capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UserError, match=message):
        Redactor.compile(patterns)  # type: ignore[arg-type]
    assert capfd.readouterr().err == ""  # RE2 prints nothing of its own
