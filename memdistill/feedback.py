"""Reading whether a sample failed from its feedback.

Dict feedback decides first, from the keys graders commonly write (`correct`, `success`, `exit_code`,
`reward`, ...) at the top level or one level down (`{"result": {"success": false}}`). Text patterns
apply only to text feedback and to dicts without such keys, and a match preceded by a negation ("no
error", "not wrong", "without failure") does not count.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from memdistill.errors import UserError

DEFAULT_FAILURE_PATTERNS: tuple[str, ...] = (
    r"\bincorrect\b",
    r"\bwrong\b",
    r"\bfail(ed|ure|s)?\b",
    r"\berror\b",
    r"\bnot (correct|right)\b",
)

# Verdicts: false means failed. Exit codes: anything but 0 means failed. Scores: <= 0 means failed.
# Checked in this order; the first key holding a readable value decides.
FLAG_KEYS = ("correct", "success", "succeeded", "passed", "solved", "ok")
EXIT_CODE_KEYS = ("exit_code", "returncode", "return_code", "exitcode")
SCORE_KEYS = ("reward", "score")
_TRUE_WORDS = frozenset({"true", "yes", "1"})
_FALSE_WORDS = frozenset({"false", "no", "0"})
# A negation right before a match, with at most one word between ("no error", "without any failure").
_NEGATION_BEFORE = re.compile(r"\b(?:no|not|never|without|zero)\s+(?:\w+\s+)?$", re.IGNORECASE)


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


def _as_bool(value: Any) -> bool | None:
    """bool, 0/1 or "true"/"false"/"yes"/"no"/"0"/"1"; None when the value says neither."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    return None


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def verdict_from_keys(content: Mapping[str, Any]) -> bool | None:
    """True (failed) / False (succeeded) from the dict's own verdict keys, or None when it has none."""
    lowered = {str(key).strip().lower(): value for key, value in content.items()}
    for key in FLAG_KEYS:
        flag = _as_bool(lowered.get(key))
        if flag is not None:
            return not flag
    for key in EXIT_CODE_KEYS:
        code = _as_number(lowered.get(key))
        if code is not None:
            return code != 0
    for key in SCORE_KEYS:
        score = _as_number(lowered.get(key))
        if score is not None:
            return score <= 0
    return None


def dict_verdict(content: Mapping[str, Any]) -> bool | None:
    """The dict's verdict, or that of the first nested dict (one level: `result`, `outcome`, ...) that has one."""
    verdict = verdict_from_keys(content)
    if verdict is not None:
        return verdict
    for value in content.values():
        if isinstance(value, Mapping):
            verdict = verdict_from_keys(value)
            if verdict is not None:
                return verdict
    return None


def _text_of(content: Any) -> str:
    if isinstance(content, Mapping):
        return " ".join(_text_of(value) for value in content.values())
    if isinstance(content, list):
        return " ".join(_text_of(value) for value in content)
    return str(content)


def matches_unnegated(text: str, patterns: Sequence[re.Pattern[str]]) -> bool:
    """True when some pattern matches somewhere not preceded by a negation."""
    for pattern in patterns:
        for match in pattern.finditer(text):
            if not _NEGATION_BEFORE.search(text, 0, match.start()):
                return True
    return False


def is_failure(
    content: str | dict[str, Any] | None,
    failure_patterns: Sequence[str | re.Pattern[str]] = DEFAULT_FAILURE_PATTERNS,
) -> bool:
    """True when feedback says the action failed.

    Dict feedback: verdict keys decide (see `dict_verdict`). Text feedback, and a dict without verdict
    keys, is matched case-insensitively against `failure_patterns`, ignoring negated matches. Missing
    feedback is not a failure: nothing says it went wrong.
    """
    if content is None:
        return False
    if isinstance(content, Mapping):
        verdict = dict_verdict(content)
        if verdict is not None:
            return verdict
    patterns = [p if isinstance(p, re.Pattern) else re.compile(p, flags=re.IGNORECASE) for p in failure_patterns]
    return matches_unnegated(_text_of(content), patterns)
