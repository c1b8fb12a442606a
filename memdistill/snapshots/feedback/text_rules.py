"""Rules that read feedback text, and the negation they share.

Each rule is a pure function of a `FeedbackText` (the text, the reader's patterns, and what has been worked
out about it once: its lower-cased form, each pattern's matches sorted into negated or not); it returns a
Verdict or None to pass. Count, fraction and exit code regexes are written in lower case and matched
against the lower-cased text, which `re` scans several times faster than case-insensitive patterns.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from memdistill.snapshots.feedback.literals import fold, required_literals
from memdistill.snapshots.feedback.verdict import Verdict

_NEGATION_WORDS = frozenset("""
    no not never without zero none nothing nor cannot can't won't isn't wasn't aren't weren't don't doesn't didn't hasn't
    haven't hadn't sin ningún ninguna ninguno ningun nunca kein keine keinen keinem keiner keines ohne nicht nie aucun
    aucune sans pas jamais ni 0""".split())
# A failure word right after these describes a repair ("fixed the failing test", "handled 3 errors").
_REPAIR_WORDS = frozenset("fix fixed fixes resolved resolves handled handles addressed corrected caught catches prevents avoids".split())
_CJK_NEGATIONS = ("没有", "没", "无", "未", "不", "非", "零")
_LOOKBEHIND = 64  # characters before a match searched for a negation: three words and then some
_CLAUSE_BREAK = re.compile(r"[^\w \t'’-]")  # punctuation or a line break ends a negation's reach
_TOKEN = re.compile(r"[\w'’-]+")

_FAIL_WORDS = r"failed|failures?|failing|errors?|errored|fallid[oa]s|fallos|errores|fehlgeschlagen|fehler|échecs?|échoués?|erreurs?"
_PASS_WORDS = r"passed|passing|pass(?:es)?|succeeded|pasaron|aprobad[oa]s|correctos|bestanden|erfolgreich|réussis?"
_COUNT_FIRST = re.compile(rf"(?<![\w./-])(\d+)[^\S\n]+(?:[a-z]+[^\S\n]+){{0,2}}?({_FAIL_WORDS}|{_PASS_WORDS})\b")
_WORD_FIRST = re.compile(rf"\b({_FAIL_WORDS}|{_PASS_WORDS})[^\S\n]*[:=]?[^\S\n]*(\d+)\b(?!\s*/)")
_ZH_COUNT = re.compile(r"(\d+)\s*[个项項]?\s*(?:测试|用例)?\s*(失败|错误|通过)|(失败|错误|通过)\s*[:：]?\s*(\d+)")
_FAIL_WORD = re.compile(rf"^(?:{_FAIL_WORDS}|失败|错误)$", re.IGNORECASE)
_FRACTION_THEN_WORD = re.compile(
    rf"(?<![\w./-])(\d+)\s*(?:/|of|out of|von|de|sur)\s*(\d+)[^\S\n]+(?:[\w-]+[^\S\n]+){{0,2}}?(?:{_PASS_WORDS}|correct)\b"
)
_WORD_THEN_FRACTION = re.compile(rf"\b(?:{_PASS_WORDS}|score|tests?|correct)\b\W{{0,4}}(\d+)\s*/\s*(\d+)\b")
_EXIT_CODE = re.compile(
    r"(?:\b(?:exit(?:ed)?[\s_-]+(?:with\s+)?(?:status|code)|return(?:ed)?\s+(?:with\s+)?(?:status|code)|exit_?code|returncode"
    r"|código de salida|code de sortie)|退出码|退出代码)\s*[:=]?\s*(-?\d+)|\brc\s*[:=]\s*(-?\d+)"
)
_TRACEBACK = re.compile(r"Traceback \(most recent call last\)")
_EXCEPTION_LINE = re.compile(r"^(?:\w+\.)*\w*(?:Error|Exception)\b(?:\s*:.*)?$")
# Counts, fractions and exit codes need a digit and one of these words: most feedback skips those rules at once.
_DIGIT = re.compile(r"\d")
_COUNT_HINTS = ("fail", "error", "pass", "succeed", "fallid", "fallo", "aprobad", "pasaron", "correctos", "fehl", "bestanden",
                "erfolgreich", "échec", "échou", "erreur", "réussi", "失败", "错误", "通过")
_FRACTION_HINTS = ("pass", "succeed", "pasaron", "aprobad", "correct", "bestanden", "erfolgreich", "réussi", "score", "test")
_EXIT_HINTS = ("exit", "return", "rc", "código de salida", "code de sortie", "退出")


def text_of(content: Any) -> str:
    """The text the text rules read: a string as is, a dict's values one per line."""
    if isinstance(content, Mapping):
        return "\n".join(text_of(value) for value in content.values())
    if isinstance(content, (list, tuple)):
        return "\n".join(text_of(value) for value in content)
    return content if isinstance(content, str) else json.dumps(content)


def negated(text: str, start: int, repair: bool = False) -> bool:
    """Whether the match at `start` follows a negation word (or, with `repair`, a repair word) with at most two
    words between, in the same clause: "no errors", "not all tests pass", "pas d'erreur", "没有错误"."""
    window = text[max(0, start - _LOOKBEHIND) : start]
    if window.rstrip(" \t").endswith(_CJK_NEGATIONS):
        return True
    if not window or window[-1] not in " \t'’":
        return False
    clause = _CLAUSE_BREAK.split(window)[-1]
    words = _TOKEN.findall(clause)
    if words and words[-1][-1] in "'’" and len(words[-1]) == 2:  # an elided article: "d'", "l'"
        words.pop()
    if words and clause == window and window[0].isalnum() and start > _LOOKBEHIND and text[start - _LOOKBEHIND - 1].isalnum():
        words.pop(0)  # the end of a word the window cut ("casi|no")
    vocabulary = _NEGATION_WORDS | _REPAIR_WORDS if repair else _NEGATION_WORDS
    return any(word.lower().replace("’", "'") in vocabulary for word in words[-3:])


@dataclass
class FeedbackText:
    """The text the text rules read, with what is worked out about it once (its lower-cased and folded forms,
    which patterns match it negated or not)."""

    text: str
    failure_patterns: Sequence[re.Pattern[str]]
    success_patterns: Sequence[re.Pattern[str]]
    _scans: dict[tuple[re.Pattern[str], bool], tuple[bool, bool]] = field(default_factory=dict)
    _lowered: str | None = None
    _folded: str | None = None

    @property
    def lowered(self) -> str:
        """The text in lower case ("" without a digit), which the count, fraction and exit code rules read."""
        if self._lowered is None:
            self._lowered = self.text.lower() if _DIGIT.search(self.text) else ""
        return self._lowered

    def mentions(self, hints: Sequence[str]) -> bool:
        """Whether the text has a digit and one of `hints` (lower-case substrings)."""
        return any(hint in self.lowered for hint in hints)

    def has(self, pattern: re.Pattern[str], want_negated: bool, repair: bool) -> bool:
        """Whether `pattern` matches somewhere preceded (`want_negated`) or not preceded by a negation. A scan
        that ends early has found what a rule decides on; a full one is kept for the rule reading the other kind."""
        known = self._scans.get((pattern, repair))
        if known is not None:
            return known[want_negated]
        literals = required_literals(pattern.pattern)
        if literals is not None and self._folded is None:
            self._folded = fold(self.text)
        found = [False, False]  # [plain, negated]
        if literals is None or any(word in self._folded for word in literals):  # type: ignore[operator]
            for match in pattern.finditer(self.text):
                kind = negated(self.text, match.start(), repair)
                if kind == want_negated:
                    return True
                found[kind] = True
        self._scans[(pattern, repair)] = (found[0], found[1])
        return found[want_negated]

    def first(self, patterns: Sequence[re.Pattern[str]], want_negated: bool, repair: bool) -> re.Pattern[str] | None:
        """The first pattern with a match that is (`want_negated`) or is not preceded by a negation."""
        return next((p for p in patterns if self.has(p, want_negated, repair)), None)


def text_fraction(view: FeedbackText) -> Verdict | None:
    """"3/5 tests passed", "score: 0/5", "5 of 5 passed": fewer than all = failed."""
    if not view.mentions(_FRACTION_HINTS):
        return None
    fractions = [(int(m[1]), int(m[2])) for regex in (_FRACTION_THEN_WORD, _WORD_THEN_FRACTION) for m in regex.finditer(view.lowered)]
    fractions = [(done, total) for done, total in fractions if total > 0]
    if not fractions:
        return None
    return Verdict(any(done < total for done, total in fractions), "text:fraction")


def text_counts(view: FeedbackText) -> Verdict | None:
    """Counts of failures and passes ("2 failed, 3 passed", "errors: 1", "0 failed", "0 passed"): any failure
    = failed (`text:failed_count`); none passed = failed (`text:zero_passed`); all counts of failures zero =
    passed (`text:zero_failed`). A count after a negation or repair word ("fixed 3 errors") is not read."""
    if not view.mentions(_COUNT_HINTS):
        return None
    text = view.lowered
    counts: list[tuple[int, str]] = []
    for match in _COUNT_FIRST.finditer(text):
        if not negated(text, match.start(), repair=True):
            counts.append((int(match[1]), match[2]))
    for match in _WORD_FIRST.finditer(text):
        if not negated(text, match.start(), repair=True):
            counts.append((int(match[2]), match[1]))
    for match in _ZH_COUNT.finditer(text) if view.mentions(("失败", "错误", "通过")) else ():
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


def text_exit_code(view: FeedbackText) -> Verdict | None:
    """"exit status 1", "exited with code 0", "returncode=2": any non-zero code = failed; all zero = passed."""
    if not view.mentions(_EXIT_HINTS):
        return None
    codes = [int(match[1] or match[2]) for match in _EXIT_CODE.finditer(view.lowered)]
    return Verdict(any(codes), "text:exit_code") if codes else None


def text_traceback(view: FeedbackText) -> Verdict | None:
    """A Python traceback, or a last line naming an exception (`TypeError: ...`, `java.io.IOException`)."""
    last = view.text.rstrip().rsplit("\n", 1)[-1].strip()
    if _TRACEBACK.search(view.text) or _EXCEPTION_LINE.match(last):
        return Verdict(True, "text:traceback")
    return None


def text_failure_pattern(view: FeedbackText) -> Verdict | None:
    """A failure pattern ("wrong", "Timed out", "测试失败", "fehlgeschlagen") not negated nor repaired."""
    found = view.first(view.failure_patterns, want_negated=False, repair=True)
    return None if found is None else Verdict(True, f"text:pattern:{found.pattern}")


def text_negated_success(view: FeedbackText) -> Verdict | None:
    """A success pattern right after a negation ("did not pass", "nicht bestanden", "不成功") = failed."""
    found = view.first(view.success_patterns, want_negated=True, repair=False)
    return None if found is None else Verdict(True, f"text:negated_success:{found.pattern}")


def text_success_pattern(view: FeedbackText) -> Verdict | None:
    """A success pattern ("all tests pass", "correcto", "通过") = passed."""
    found = view.first(view.success_patterns, want_negated=False, repair=False)
    return None if found is None else Verdict(False, f"text:success:{found.pattern}")


def text_negated_failure(view: FeedbackText) -> Verdict | None:
    """Only negated failures ("no errors", "sin errores", "keine Fehler", "aucune erreur") = passed."""
    found = view.first(view.failure_patterns, want_negated=True, repair=True)
    return None if found is None else Verdict(False, f"text:negated_failure:{found.pattern}")


TEXT_RULES: tuple[Callable[[FeedbackText], Verdict | None], ...] = (
    text_fraction, text_counts, text_exit_code, text_traceback,
    text_failure_pattern, text_negated_success, text_success_pattern, text_negated_failure,
)
