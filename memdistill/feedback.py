"""Reading whether a sample failed from its feedback (dict flags or text patterns)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from memdistill.errors import UserError

DEFAULT_FAILURE_PATTERNS: tuple[str, ...] = (
    r"\bincorrect\b",
    r"\bwrong\b",
    r"\bfail(ed|ure|s)?\b",
    r"\berror\b",
    r"\bnot (correct|right)\b",
)

# Boolean verdicts: false means failed. Numeric scores: <= 0 means failed. Checked in this order.
_FLAG_KEYS = ("correct", "success", "passed")
_SCORE_KEYS = ("reward", "score")


def compile_failure_patterns(patterns: Sequence[str] | None) -> tuple[re.Pattern[str], ...]:
    """Compile `failure_patterns` case-insensitively (null = none); a bad regex is a UserError naming the field."""
    if patterns is None:
        return ()
    if not isinstance(patterns, (list, tuple)):
        raise UserError(f"failure_patterns: expected a list of regular expressions, got {patterns!r}")
    compiled = []
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise UserError(f"failure_patterns: expected strings, got {pattern!r}")
        try:
            regex = re.compile(pattern, flags=re.IGNORECASE)
        except re.error as exc:
            raise UserError(f"failure_patterns: '{pattern}' is not a valid regular expression ({exc})") from None
        # A pattern that matches the empty string would call every feedback a failure.
        if regex.search("") is not None:
            raise UserError(f"failure_patterns: '{pattern}' matches the empty string")
        compiled.append(regex)
    return tuple(compiled)


def is_failure(
    content: str | dict[str, Any] | None,
    failure_patterns: Sequence[str | re.Pattern[str]] = DEFAULT_FAILURE_PATTERNS,
) -> bool:
    """True when feedback says the action failed.

    Dict feedback: the first of correct/success/passed that holds a boolean decides (false = failed);
    else the first of reward/score that holds a number decides (<= 0 = failed). Text feedback, and a
    dict with none of those keys, is matched case-insensitively against `failure_patterns`. Missing
    feedback is not a failure: nothing says it went wrong.
    """
    if content is None:
        return False
    if isinstance(content, dict):
        lowered = {str(key).lower(): value for key, value in content.items()}
        for key in _FLAG_KEYS:
            if isinstance(lowered.get(key), bool):
                return not lowered[key]
        for key in _SCORE_KEYS:
            value = lowered.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return value <= 0
        text = " ".join(str(value) for value in content.values())
    else:
        text = content
    return any(
        (pattern.search(text) if isinstance(pattern, re.Pattern) else re.search(pattern, text, flags=re.IGNORECASE))
        for pattern in failure_patterns
    )
