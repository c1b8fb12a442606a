"""Privacy: replace sensitive spans before anything reaches a teacher or a file."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from memdistill.errors import UserError

REDACTION_MARKER = "[REDACTED]"
# E-mail addresses and OpenAI-style API keys.
DEFAULT_REDACT_PATTERNS: tuple[str, ...] = (r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}", r"sk-[A-Za-z0-9_-]{16,}")


@dataclass(frozen=True)
class Redactor:
    patterns: tuple[re.Pattern[str], ...]
    marker: str = REDACTION_MARKER

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
            try:
                regex = re.compile(pattern)
            except re.error as exc:
                raise UserError(f"redact_patterns: '{pattern}' is not a valid regular expression ({exc})") from None
            # A pattern that matches the empty string would put a marker between every character.
            if regex.fullmatch(""):
                raise UserError(f"redact_patterns: '{pattern}' matches the empty string")
            compiled.append(regex)
        return cls(tuple(compiled), marker)

    def text(self, value: str) -> tuple[str, int]:
        """The redacted text and how many spans were replaced (patterns apply in order)."""
        count = 0
        for pattern in self.patterns:
            value, n = pattern.subn(self.marker, value)
            count += n
        return value, count

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
