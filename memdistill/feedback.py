"""Reading whether a sample failed from its feedback (dict flags or text patterns)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

DEFAULT_FAILURE_PATTERNS: tuple[str, ...] = (
    r"\bincorrect\b",
    r"\bwrong\b",
    r"\bfail(ed|ure|s)?\b",
    r"\berror\b",
    r"\bnot (correct|right)\b",
)

_FALSE_FLAGS = ("correct", "success", "passed")
_SCORE_KEYS = ("reward", "score")


def is_failure(content: str | dict[str, Any] | None, failure_patterns: Sequence[str] = DEFAULT_FAILURE_PATTERNS) -> bool:
    """True when feedback says the action failed.

    Dict feedback: any of correct/success/passed is false, or reward/score is <= 0. Text feedback (and a
    dict without those keys) is matched case-insensitively against `failure_patterns`.
    """
    if content is None:
        return False
    if isinstance(content, dict):
        lowered = {str(key).lower(): value for key, value in content.items()}
        for key in _FALSE_FLAGS:
            if key in lowered and isinstance(lowered[key], bool):
                return not lowered[key]
        for key in _SCORE_KEYS:
            if key in lowered and isinstance(lowered[key], (int, float)) and not isinstance(lowered[key], bool):
                return lowered[key] <= 0
        text = " ".join(str(value) for value in content.values())
    else:
        text = content
    return any(re.search(pattern, text, flags=re.IGNORECASE) for pattern in failure_patterns)
