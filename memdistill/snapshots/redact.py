"""Privacy: replace sensitive spans before anything reaches a teacher or a file.

Patterns run on RE2 (the `google-re2` package), whose matching time is linear in the text whatever the
pattern: Python's backtracking `re` takes quadratic time for the usual e-mail pattern on one long
unbroken word (60 s for 200 KB) and can take exponential time for a careless user pattern. RE2 has no
back-references or look-around; such a pattern is refused with a clear message. Its `\\d`, `\\w` and
`\\b` are ASCII-only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import re2

from memdistill.core.errors import UserError

REDACTION_MARKER = "[REDACTED]"
# E-mail addresses and OpenAI-style API keys.
DEFAULT_REDACT_PATTERNS: tuple[str, ...] = (r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}", r"sk-[A-Za-z0-9_-]{16,}")

_UNANCHORED = re2._re2.RE2.Anchor.UNANCHORED


def _options() -> "re2.Options":
    options = re2.Options()
    options.log_errors = False  # RE2 would print its own line on stderr beside our error
    return options


def compile_linear(pattern: str, field: str = "redact_patterns") -> "re2._Regexp":
    """Compile `pattern` with RE2; a syntax it does not support is a UserError naming the field."""
    try:
        return re2.compile(pattern, options=_options())
    except re2.error as exc:
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise UserError(
            f"{field}: '{pattern}' is not a valid regular expression for the linear-time engine RE2 ({reason}); "
            f"back-references and look-around are not supported"
        ) from None


def _replace_bytes(regexp: "re2._Regexp", data: bytes, replacement: bytes) -> tuple[bytes, int]:
    """Every non-empty match of `regexp` in UTF-8 `data` replaced, in one left-to-right pass."""
    match = regexp._regexp.Match
    pieces: list[bytes] = []
    end = len(data)
    last = pos = count = 0
    while pos <= end:
        start, stop = match(_UNANCHORED, data, pos, end)[0]
        if start < 0:
            break
        if stop == start:  # step over one whole UTF-8 character
            pos = stop + 1
            while pos < end and data[pos] & 0xC0 == 0x80:
                pos += 1
            continue
        pieces.append(data[last:start])
        pieces.append(replacement)
        count += 1
        last = pos = stop
    if count == 0:
        return data, 0
    pieces.append(data[last:])
    return b"".join(pieces), count


def replace_all(regexp: "re2._Regexp", text: str, marker: str) -> tuple[str, int]:
    """`regexp.subn(marker, text)` without google-re2's per-match Python cost.

    Its own `subn` spends about 15 µs of Python per match; calling RE2's matcher directly on the UTF-8
    bytes costs a fifth of that. Empty matches are not replaced (patterns that match the empty string
    are refused; one such as `\\b` still may match empty at some positions).
    """
    data, count = _replace_bytes(regexp, _encode(text), marker.encode("utf-8"))
    return (_decode(data), count) if count else (text, 0)


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # JSON may hold lone surrogates


def _decode(data: bytes) -> str:
    return data.decode("utf-8", "surrogatepass")


def _any_of(patterns: Sequence["re2._Regexp"]) -> "re2._Regexp | None":
    """One regex matching wherever any pattern does: a single scan tells most texts have nothing to redact."""
    if len(patterns) < 2:
        return patterns[0] if patterns else None
    try:
        return re2.compile("|".join(f"(?:{p.pattern})" for p in patterns), options=_options())
    except re2.error:
        return None


@dataclass(frozen=True)
class Redactor:
    patterns: tuple["re2._Regexp", ...]
    marker: str = REDACTION_MARKER
    prefilter: "re2._Regexp | None" = field(default=None, compare=False)

    @classmethod
    def compile(cls, patterns: Sequence[str] | None, marker: str = REDACTION_MARKER) -> "Redactor":
        if patterns is None:  # `redact_patterns: null` in params.yaml means no redaction
            return cls((), marker)
        if not isinstance(patterns, (list, tuple)):
            raise UserError(f"redact_patterns: expected a list of regular expressions, got {patterns!r}")
        compiled = []
        for pattern in patterns:
            if not isinstance(pattern, str):
                raise UserError(f"redact_patterns: expected strings, got {pattern!r}")
            regex = compile_linear(pattern)
            # A pattern that matches the empty string would put a marker between every character.
            if regex.fullmatch("") is not None:
                raise UserError(f"redact_patterns: '{pattern}' matches the empty string")
            compiled.append(regex)
        return cls(tuple(compiled), marker, _any_of(compiled))

    def text(self, value: str) -> tuple[str, int]:
        """The redacted text and how many spans were replaced (patterns apply in order)."""
        if not self.patterns:
            return value, 0
        data = _encode(value)
        if self.prefilter is not None and self.prefilter._regexp.Match(_UNANCHORED, data, 0, len(data))[0][0] < 0:
            return value, 0
        replacement = self.marker.encode("utf-8")
        count = 0
        for pattern in self.patterns:
            data, n = _replace_bytes(pattern, data, replacement)
            count += n
        return (_decode(data), count) if count else (value, 0)

    def content(self, value: str | dict[str, Any]) -> tuple[str | dict[str, Any], int]:
        """Redact a string, or every string inside a (nested) dict; keys are left as they are."""
        if isinstance(value, str):
            return self.text(value)
        total = 0

        def walk(node: Any) -> Any:
            nonlocal total
            if isinstance(node, str):
                redacted, n = self.text(node)
                total += n
                return redacted
            if isinstance(node, dict):
                return {key: walk(item) for key, item in node.items()}
            if isinstance(node, list):
                return [walk(item) for item in node]
            return node

        return walk(value), total
