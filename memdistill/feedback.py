"""Reading whether a sample failed from its feedback: a small ordered rule set.

Every rule is a pure function of the feedback and the reader's configuration that either decides (a
`Verdict`: failed or passed, with the rule's name) or passes to the next rule. Dict feedback is read from
its keys first (`DICT_RULES`, at the top level, then one nested object down), and then, like text
feedback, from its text (`TEXT_RULES`, over the dict's values). The first rule that decides wins; when
none does the verdict is unknown (`failed: None`, rule `none`), which counts as not failed.

Text rules, in order: fractions ("3/5 tests passed"), counts ("2 failed", "0 errors"), exit codes ("exit
status 1"), tracebacks (a last line such as `TypeError: ...`), then the failure patterns, negated success
patterns ("not all tests pass"), success patterns, negated failure patterns ("no errors"). A pattern match
right after a negation word ("no", "without", "sin", "keine", "aucune", "没有", ...) with at most two words
between is negated; a failure word right after a repair word ("fixed the failing test") does not count.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from memdistill.errors import UserError

DEFAULT_FAILURE_PATTERNS: tuple[str, ...] = (
    r"\b(?:incorrect|wrong|not (?:correct|right))\b",
    r"\bfail(?:s|ed|ing|ures?)?\b",
    # "error handling", "error messages", "exception handling" describe work done, not an outcome.
    r"\b(?:errors?|exceptions?)\b(?![\s-]+(?:handl|messag|check|report|recover|bound)\w*)",
    r"\b(?:timed?[\s-]?out|segmentation fault|segfault|core dumped|crash(?:ed|es)?|panicked|aborted|out of memory)\b",
    r"\b(?:not a single|none of the)\b[^.\n]{0,60}?\b(?:pass(?:ed|es)?|succeeded|worked)\b",
    r"失败|错误|出错|报错|不正确|超时|崩溃|未通过",
    r"\b(?:fall(?:ó|o|aron|ido|ida|idos|idas)|errores|incorrect[oa]s?|erróne[oa]s?)\b",
    r"\b(?:fehlgeschlagen|fehler|falsch|gescheitert)\b",
    r"\b(?:échou(?:é|ée|és|ées|e|ent)|échecs?|erreurs?|incorrecte?s?|faux|fausse)\b",
)
DEFAULT_SUCCESS_PATTERNS: tuple[str, ...] = (
    r"\b(?:pass(?:es|ed|ing)?|ok|correct(?:ly)?|success(?:ful(?:ly)?)?|succeed(?:s|ed)?|solved|well done)\b",
    r"通过|成功|正确",
    r"\b(?:correct[oa]s?|correctamente|éxito|exitos[oa]|aprobad[oa]s?|pas(?:ó|aron))\b",
    r"\b(?:bestanden|erfolgreich|korrekt|richtig)\b",
    r"\b(?:réussie?s?|succès|correcte?s?)\b",
)
# Dict keys by role (lower-case). verdict: a boolean, true = passed. status: a word (passed/failed/error...).
# failed: a flag or a count of failures (true or > 0 = failed). passed: a flag or a count of passes, read
# against a total when the dict has one. exit_code: anything but 0 = failed. score: <= 0 = failed.
DEFAULT_FEEDBACK_KEYS: dict[str, tuple[str, ...]] = {
    "verdict": ("correct", "success", "succeeded", "solved", "ok", "is_correct", "accepted", "resolved"),
    "status": ("status", "result", "outcome", "verdict", "state", "conclusion"),
    "failed": ("failed", "failures", "failure", "errors", "error", "num_failed", "n_failed", "failed_count",
               "failure_count", "error_count", "tests_failed", "failed_tests"),
    "passed": ("passed", "pass", "passes", "num_passed", "n_passed", "passed_count", "tests_passed", "passed_tests"),
    "total": ("total", "tests", "num_tests", "n_tests", "total_tests", "count", "collected"),
    "exit_code": ("exit_code", "returncode", "return_code", "exitcode", "exit_status", "rc"),
    "score": ("reward", "score"),
}
KEY_ROLES = tuple(DEFAULT_FEEDBACK_KEYS)

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
_NEGATION_WORDS = (
    r"no|not|never|without|zero|none|nothing|nor|cannot|(?:is|was|are|were|do|does|did|has|have|had|ca|wo)n[’']t"
    r"|sin|ningún|ninguna|ninguno|ningun|nunca|kein|keine|keinen|keinem|keiner|keines|ohne|nicht|nie"
    r"|aucun|aucune|sans|pas|jamais|ni|0"
)
# A failure word right after these describes a repair ("fixed the failing test", "handled 3 errors").
_REPAIR_WORDS = r"fix|fixed|fixes|resolved|resolves|handled|handles|addressed|corrected|caught|catches|prevents|avoids"
# The words may be followed by up to two more words (or an elided French article: "pas d'erreur").
_WORDS_THEN = r"[^\S\n]+(?:[\w'’-]+[^\S\n]+){0,2}(?:\w+['’])?$"
_CJK_NEGATION = r"(?:没有|没|无|未|不|非|零)[^\S\n]*$"
_NEGATED = re.compile(rf"(?:(?<!\w)(?:{_NEGATION_WORDS}){_WORDS_THEN}|{_CJK_NEGATION})", re.IGNORECASE)
_NEGATED_OR_REPAIRED = re.compile(rf"(?:(?<!\w)(?:{_NEGATION_WORDS}|{_REPAIR_WORDS}){_WORDS_THEN}|{_CJK_NEGATION})", re.IGNORECASE)
_LOOKBEHIND = 64  # characters before a match searched for a negation: three words and then some

_FAIL_WORDS = r"failed|failures?|failing|errors?|errored|fallid[oa]s|fallos|errores|fehlgeschlagen|fehler|échecs?|échoués?|erreurs?"
_PASS_WORDS = r"passed|passing|pass(?:es)?|succeeded|pasaron|aprobad[oa]s|correctos|bestanden|erfolgreich|réussis?"
_COUNT_FIRST = re.compile(rf"(?<![\w./-])(\d+)[^\S\n]+(?:[a-z]+[^\S\n]+){{0,2}}?({_FAIL_WORDS}|{_PASS_WORDS})\b", re.IGNORECASE)
_WORD_FIRST = re.compile(rf"\b({_FAIL_WORDS}|{_PASS_WORDS})[^\S\n]*[:=]?[^\S\n]*(\d+)\b(?!\s*/)", re.IGNORECASE)
_ZH_COUNT = re.compile(r"(\d+)\s*[个项項]?\s*(?:测试|用例)?\s*(失败|错误|通过)|(失败|错误|通过)\s*[:：]?\s*(\d+)")
_FAIL_WORD = re.compile(rf"^(?:{_FAIL_WORDS}|失败|错误)$", re.IGNORECASE)
_FRACTION_THEN_WORD = re.compile(
    rf"(?<![\w./-])(\d+)\s*(?:/|of|out of|von|de|sur)\s*(\d+)[^\S\n]+(?:[\w-]+[^\S\n]+){{0,2}}?(?:{_PASS_WORDS}|correct)\b", re.IGNORECASE
)
_WORD_THEN_FRACTION = re.compile(rf"\b(?:{_PASS_WORDS}|score|tests?|correct)\b\W{{0,4}}(\d+)\s*/\s*(\d+)\b", re.IGNORECASE)
_EXIT_CODE = re.compile(
    r"(?:\b(?:exit(?:ed)?[\s_-]+(?:with\s+)?(?:status|code)|return(?:ed)?\s+(?:with\s+)?(?:status|code)|exit_?code|returncode"
    r"|código de salida|code de sortie)|退出码|退出代码)\s*[:=]?\s*(-?\d+)|\brc\s*[:=]\s*(-?\d+)",
    re.IGNORECASE,
)
_TRACEBACK = re.compile(r"Traceback \(most recent call last\)")
_EXCEPTION_LINE = re.compile(r"^(?:\w+\.)*\w*(?:Error|Exception)\b(?:\s*:.*)?$")
_FRACTION_VALUE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)\s*$")


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a feedback says: failed (True), passed (False) or nothing readable (None), and the rule that decided."""

    failed: bool | None
    rule: str

    def to_dict(self) -> dict[str, Any]:
        return {"failed": self.failed, "rule": self.rule}


def compile_patterns(field: str, patterns: Sequence[str] | None) -> tuple[re.Pattern[str], ...]:
    """Compile a pattern list case-insensitively (null = none); a bad one is a UserError naming the field."""
    if patterns is None:
        return ()
    if not isinstance(patterns, (list, tuple)):
        raise UserError(f"{field}: expected a list of regular expressions, got {patterns!r}")
    compiled = []
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise UserError(f"{field}: expected strings, got {pattern!r}")
        try:
            regex = re.compile(pattern, flags=re.IGNORECASE)
        except re.error as exc:
            raise UserError(f"{field}: '{pattern}' is not a valid regular expression ({exc})") from None
        # A pattern that matches the empty string would match every feedback.
        if regex.search("") is not None:
            raise UserError(f"{field}: '{pattern}' matches the empty string")
        compiled.append(regex)
    return tuple(compiled)


def compile_feedback_keys(keys: Mapping[str, Sequence[str]] | None) -> dict[str, tuple[str, ...]]:
    """The keys per role: the defaults, with each role given replacing its own (an empty list turns it off)."""
    merged = dict(DEFAULT_FEEDBACK_KEYS)
    for role, names in (keys or {}).items():
        if role not in DEFAULT_FEEDBACK_KEYS:
            raise UserError(f"feedback_keys: unknown role '{role}'; expected some of {', '.join(KEY_ROLES)}")
        merged[role] = tuple(str(name).strip().lower() for name in names)
    return merged


@dataclass(frozen=True, slots=True)
class FeedbackReader:
    """The rules' configuration; `read` applies the rules in order."""

    failure_patterns: tuple[re.Pattern[str], ...]
    success_patterns: tuple[re.Pattern[str], ...]
    keys: Mapping[str, tuple[str, ...]]

    @classmethod
    def from_params(
        cls,
        failure_patterns: Sequence[str] | None = DEFAULT_FAILURE_PATTERNS,
        success_patterns: Sequence[str] | None = DEFAULT_SUCCESS_PATTERNS,
        feedback_keys: Mapping[str, Sequence[str]] | None = None,
    ) -> FeedbackReader:
        return cls(
            compile_patterns("failure_patterns", failure_patterns),
            compile_patterns("success_patterns", success_patterns),
            compile_feedback_keys(feedback_keys),
        )

    def read(self, content: str | Mapping[str, Any] | None) -> Verdict:
        """The first rule that decides; feedback that is missing is `missing`, one no rule reads is `none`."""
        if content is None:
            return Verdict(None, "missing")
        if isinstance(content, Mapping):
            for level in (content, *(value for value in content.values() if isinstance(value, Mapping))):
                lowered = {str(key).strip().lower(): value for key, value in level.items()}
                for dict_rule in DICT_RULES:
                    if (verdict := dict_rule(lowered, self.keys)) is not None:
                        return verdict
        text = text_of(content)
        for text_rule in TEXT_RULES:
            if (verdict := text_rule(text, self)) is not None:
                return verdict
        return Verdict(None, "none")

    def failed(self, content: str | Mapping[str, Any] | None) -> bool:
        """Whether the feedback says the action failed (an unknown verdict does not)."""
        return self.read(content).failed is True


# ------------------------------------------------------------------------------------------- values


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


# --------------------------------------------------------------------------------------- text rules


def text_of(content: Any) -> str:
    """The text the text rules read: a string as is, a dict's values one per line."""
    if isinstance(content, Mapping):
        return "\n".join(text_of(value) for value in content.values())
    if isinstance(content, (list, tuple)):
        return "\n".join(text_of(value) for value in content)
    return content if isinstance(content, str) else json.dumps(content)


def _negated(text: str, start: int, negation: re.Pattern[str] = _NEGATED) -> bool:
    return negation.search(text, max(0, start - _LOOKBEHIND), start) is not None


def text_fraction(text: str, reader: FeedbackReader) -> Verdict | None:
    """"3/5 tests passed", "score: 0/5", "5 of 5 passed": fewer than all = failed."""
    fractions = [(int(m[1]), int(m[2])) for regex in (_FRACTION_THEN_WORD, _WORD_THEN_FRACTION) for m in regex.finditer(text)]
    fractions = [(done, total) for done, total in fractions if total > 0]
    if not fractions:
        return None
    return Verdict(any(done < total for done, total in fractions), "text:fraction")


def text_counts(text: str, reader: FeedbackReader) -> Verdict | None:
    """Counts of failures and passes ("2 failed, 3 passed", "errors: 1", "0 failed", "0 passed"): any failure
    = failed (`text:failed_count`); none passed = failed (`text:zero_passed`); all counts of failures zero =
    passed (`text:zero_failed`). A count after a negation or repair word ("fixed 3 errors") is not read."""
    counts: list[tuple[int, str]] = []
    for match in _COUNT_FIRST.finditer(text):
        if not _negated(text, match.start(), _NEGATED_OR_REPAIRED):
            counts.append((int(match[1]), match[2]))
    for match in _WORD_FIRST.finditer(text):
        if not _negated(text, match.start(), _NEGATED_OR_REPAIRED):
            counts.append((int(match[2]), match[1]))
    for match in _ZH_COUNT.finditer(text):
        counts.append((int(match[1]), match[2]) if match[1] else (int(match[4]), match[3]))
    failures = [count for count, word in counts if _FAIL_WORD.match(word)]
    passes = [count for count, word in counts if not _FAIL_WORD.match(word)]
    if any(failures):
        return Verdict(True, "text:failed_count")
    if passes and not any(passes):
        return Verdict(True, "text:zero_passed")
    if failures:
        return Verdict(False, "text:zero_failed")
    return None


def text_exit_code(text: str, reader: FeedbackReader) -> Verdict | None:
    """"exit status 1", "exited with code 0", "returncode=2": any non-zero code = failed; all zero = passed."""
    codes = [int(match[1] or match[2]) for match in _EXIT_CODE.finditer(text)]
    return Verdict(any(codes), "text:exit_code") if codes else None


def text_traceback(text: str, reader: FeedbackReader) -> Verdict | None:
    """A Python traceback, or a last line naming an exception (`TypeError: ...`, `java.io.IOException`)."""
    last = text.rstrip().rsplit("\n", 1)[-1].strip()
    if _TRACEBACK.search(text) or _EXCEPTION_LINE.match(last):
        return Verdict(True, "text:traceback")
    return None


def _first_match(text: str, patterns: Sequence[re.Pattern[str]], negated: bool, negation: re.Pattern[str]) -> re.Pattern[str] | None:
    """The first pattern with a match that is (`negated`) or is not preceded by a negation."""
    for pattern in patterns:
        for match in pattern.finditer(text):
            if _negated(text, match.start(), negation) is negated:
                return pattern
    return None


def text_failure_pattern(text: str, reader: FeedbackReader) -> Verdict | None:
    """A failure pattern ("wrong", "Timed out", "测试失败", "fehlgeschlagen") not negated nor repaired."""
    found = _first_match(text, reader.failure_patterns, False, _NEGATED_OR_REPAIRED)
    return None if found is None else Verdict(True, f"text:pattern:{found.pattern}")


def text_negated_success(text: str, reader: FeedbackReader) -> Verdict | None:
    """A success pattern right after a negation ("did not pass", "nicht bestanden", "不成功") = failed."""
    found = _first_match(text, reader.success_patterns, True, _NEGATED)
    return None if found is None else Verdict(True, f"text:negated_success:{found.pattern}")


def text_success_pattern(text: str, reader: FeedbackReader) -> Verdict | None:
    """A success pattern ("all tests pass", "correcto", "通过") = passed."""
    found = _first_match(text, reader.success_patterns, False, _NEGATED)
    return None if found is None else Verdict(False, f"text:success:{found.pattern}")


def text_negated_failure(text: str, reader: FeedbackReader) -> Verdict | None:
    """Only negated failures ("no errors", "sin errores", "keine Fehler", "aucune erreur") = passed."""
    found = _first_match(text, reader.failure_patterns, True, _NEGATED_OR_REPAIRED)
    return None if found is None else Verdict(False, f"text:negated_failure:{found.pattern}")


TEXT_RULES: tuple[Callable[[str, FeedbackReader], Verdict | None], ...] = (
    text_fraction, text_counts, text_exit_code, text_traceback,
    text_failure_pattern, text_negated_success, text_success_pattern, text_negated_failure,
)


@functools.lru_cache(maxsize=8)
def _reader(failure_patterns: tuple[str, ...]) -> FeedbackReader:
    return FeedbackReader.from_params(failure_patterns)


def is_failure(content: str | Mapping[str, Any] | None, failure_patterns: Sequence[str] | None = DEFAULT_FAILURE_PATTERNS) -> bool:
    """Whether the feedback says the action failed, read with the default keys and success patterns."""
    return _reader(tuple(failure_patterns or ())).failed(content)
