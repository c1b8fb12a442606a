"""The feedback reader: the default patterns and keys, their validation, and the rules applied in order."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from memdistill.core.errors import UserError
from memdistill.snapshots.feedback.dict_rules import DICT_RULES
from memdistill.snapshots.feedback.text_rules import TEXT_RULES, FeedbackText, text_of
from memdistill.snapshots.feedback.verdict import Verdict

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
        view = FeedbackText(text_of(content), self.failure_patterns, self.success_patterns)
        for text_rule in TEXT_RULES:
            if (verdict := text_rule(view)) is not None:
                return verdict
        return Verdict(None, "none")

    def failed(self, content: str | Mapping[str, Any] | None) -> bool:
        """Whether the feedback says the action failed (an unknown verdict does not)."""
        return self.read(content).failed is True
