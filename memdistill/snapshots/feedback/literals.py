"""Which literal strings every match of a regular expression contains, so a scan can be skipped.

Python's `re` scans case-insensitive alternations at about 0.2 µs per character and pattern: a few KB of
test log against a dozen feedback patterns costs milliseconds per sample. Most patterns need a literal
word ("fail", "error", "失败"), and a casefolded substring test tells in microseconds that a text cannot
match. The literals come from `re`'s own parse tree (`re._parser`, private): if it ever changes shape,
`required_literals` returns None and the pattern is simply always scanned.
"""

from __future__ import annotations

import functools
import re
from typing import Any

try:
    from re import _constants as _ops
    from re import _parser
except ImportError:  # pragma: no cover - a Python whose re is laid out differently
    _parser = None

# `re.IGNORECASE` also matches these with their plain letter; casefold() leaves them as they are.
_FOLD_MORE = str.maketrans({"ı": "i"})


def fold(text: str) -> str:
    """The form both a text and the literals are compared in (case-insensitively)."""
    return text.casefold().translate(_FOLD_MORE)


@functools.lru_cache(maxsize=256)
def required_literals(pattern: str) -> frozenset[str] | None:
    """Folded strings one of which every match of `pattern` contains; None when no such set is found."""
    if _parser is None:
        return None
    try:
        literals = _sequence(list(_parser.parse(pattern, re.IGNORECASE)))
    except Exception:  # noqa: BLE001 - an unexpected tree shape only costs the shortcut
        return None
    return frozenset(fold(literal) for literal in literals) if literals else None


def _sequence(items: list[tuple[Any, Any]]) -> set[str] | None:
    """For a sequence, the most selective requirement of its parts (a run of literals, or one part's set)."""
    best: set[str] | None = None
    run: list[str] = []

    def consider(option: set[str] | None) -> None:
        nonlocal best
        if option and all(option) and (best is None or min(map(len, option)) > min(map(len, best))):
            best = option

    for op, value in items:
        if op is _ops.LITERAL:
            run.append(chr(value))
            continue
        consider({"".join(run)} if run else None)
        run = []
        consider(_part(op, value))
    consider({"".join(run)} if run else None)
    return best


def _part(op: Any, value: Any) -> set[str] | None:
    if op is _ops.SUBPATTERN:
        return _sequence(list(value[-1]))
    if op is _ops.ATOMIC_GROUP:
        return _sequence(list(value))
    if op is _ops.BRANCH:
        options = [_sequence(list(branch)) for branch in value[1]]
        return None if any(option is None for option in options) else set().union(*options)  # type: ignore[arg-type]
    if op in (_ops.MAX_REPEAT, _ops.MIN_REPEAT, _ops.POSSESSIVE_REPEAT) and value[0] >= 1:
        return _sequence(list(value[2]))
    return None
