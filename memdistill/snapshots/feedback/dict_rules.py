"""Rules that read dict feedback from its keys, by role (see `reader.DEFAULT_FEEDBACK_KEYS`).

Each rule is a pure function of one level of the dict (keys lower-cased) and the keys per role; it returns
a Verdict or None to pass. Counts are counts: `passed: 1` is one test passed, not `true`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from memdistill.snapshots.feedback.verdict import Verdict

_TRUE_WORDS = frozenset({"true", "yes", "1"})
_FALSE_WORDS = frozenset({"false", "no", "0"})
# Under a key that may hold a count (failed, passed), only these are flags: 0 and 1 are counts there.
_FLAG_WORDS = frozenset({"true", "false", "yes", "no"})
_FAILED_STATUS = frozenset({
    "failed", "failure", "fail", "failing", "error", "errored", "timeout", "timed_out", "timed out", "crashed", "wrong",
    "incorrect", "rejected", "ko", "失败", "错误", "fallido", "fallida", "fehlgeschlagen", "fehler", "échoué", "échec", "erreur",
})
_PASSED_STATUS = frozenset({
    "passed", "pass", "success", "succeeded", "successful", "ok", "correct", "solved", "accepted", "成功", "通过", "正确",
    "correcto", "éxito", "exitoso", "bestanden", "erfolgreich", "réussi", "succès",
})
_FRACTION_VALUE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)\s*$")


def _as_bool(value: Any) -> bool | None:
    """bool, 0/1 or "true"/"false"/"yes"/"no"/"0"/"1"; None when the value says neither."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        return True if word in _TRUE_WORDS else False if word in _FALSE_WORDS else None
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


def _is_flag(value: Any) -> bool:
    return isinstance(value, bool) or (isinstance(value, str) and value.strip().lower() in _FLAG_WORDS)


def _as_count(value: Any) -> float | None:
    """A count: a non-negative number (or numeric string), or a list's length (`errors: [...]`)."""
    if isinstance(value, (list, tuple)):
        return float(len(value))
    number = _as_number(value)
    return number if number is not None and number >= 0 else None


def _as_fraction(value: Any) -> tuple[float, float] | None:
    """"3/5" as (3, 5); None for anything else or a zero denominator."""
    match = _FRACTION_VALUE.match(value) if isinstance(value, str) else None
    if match is None or float(match[2]) == 0:
        return None
    return float(match[1]), float(match[2])


def _first(level: Mapping[str, Any], keys: Sequence[str], convert: Callable[[Any], Any]) -> Any:
    """The first of `keys` whose value `convert` reads (None when none does)."""
    for key in keys:
        if key in level and (value := convert(level[key])) is not None:
            return value
    return None


# --------------------------------------------------------------------------------------- dict rules


def dict_verdict(level: Mapping[str, Any], keys: Mapping[str, Sequence[str]]) -> Verdict | None:
    """`correct: false`, `success: "no"`: a boolean verdict key."""
    flag = _first(level, keys["verdict"], _as_bool)
    return None if flag is None else Verdict(not flag, "dict:verdict")


def dict_status(level: Mapping[str, Any], keys: Mapping[str, Sequence[str]]) -> Verdict | None:
    """`status: "failed"`, `result: "passed"`: a status word."""

    def word(value: Any) -> bool | None:
        text = value.strip().lower() if isinstance(value, str) else None
        return True if text in _FAILED_STATUS else False if text in _PASSED_STATUS else None

    failed = _first(level, keys["status"], word)
    return None if failed is None else Verdict(failed, "dict:status")


def dict_failed(level: Mapping[str, Any], keys: Mapping[str, Sequence[str]]) -> Verdict | None:
    """`failed: true` (a flag) or `failed: 3`, `errors: [...]` (a count: > 0 = failed; 0 = passed unless
    nothing passed either)."""
    for key in keys["failed"]:
        value = level.get(key)
        if _is_flag(value):
            return Verdict(_as_bool(value), "dict:failed_flag")
        count = _as_count(value)
        if count is None:
            continue
        if count > 0:
            return Verdict(True, "dict:failed_count")
        passed = _first(level, keys["passed"], _as_count)
        return Verdict(True, "dict:passed_count") if passed == 0 else Verdict(False, "dict:failed_count")
    return None


def dict_passed(level: Mapping[str, Any], keys: Mapping[str, Sequence[str]]) -> Verdict | None:
    """`passed: true`, `passed: "3/5"`, `passed: 3` with `total: 5` (fewer than the total = failed), `passed: 0`.
    A count is a count: `passed: 1` means one test passed, not `true`."""
    for key in keys["passed"]:
        value = level.get(key)
        if _is_flag(value):
            return Verdict(not _as_bool(value), "dict:passed_flag")
        if (fraction := _as_fraction(value)) is not None:
            return Verdict(fraction[0] < fraction[1], "dict:fraction")
        count = _as_count(value)
        if count is None:
            continue
        total = _first(level, keys["total"], _as_count)
        if total is not None:
            return Verdict(count < total, "dict:passed_count")
        return Verdict(count == 0, "dict:passed_count")
    return None


def dict_exit_code(level: Mapping[str, Any], keys: Mapping[str, Sequence[str]]) -> Verdict | None:
    """`exit_code: 1`, `returncode: "0"`: anything but 0 = failed."""
    code = _first(level, keys["exit_code"], _as_number)
    return None if code is None else Verdict(code != 0, "dict:exit_code")


def dict_score(level: Mapping[str, Any], keys: Mapping[str, Sequence[str]]) -> Verdict | None:
    """`score: "0/5"` (a fraction: less than full = failed) or `reward: 0` (<= 0 = failed)."""
    for key in keys["score"]:
        value = level.get(key)
        if (fraction := _as_fraction(value)) is not None:
            return Verdict(fraction[0] < fraction[1], "dict:fraction")
        if (score := _as_number(value)) is not None:
            return Verdict(score <= 0, "dict:score")
    return None


DICT_RULES: tuple[Callable[[Mapping[str, Any], Mapping[str, Sequence[str]]], Verdict | None], ...] = (
    dict_verdict, dict_status, dict_failed, dict_passed, dict_exit_code, dict_score,
)
