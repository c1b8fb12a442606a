"""Reading failure from feedback: every case a coding agent's checkpoint showed, the rule that decides each,
the parameters that extend the rules, the rows' metadata and the `memdistill feedback` audit table."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from memdistill.cli import main as cli_main
from memdistill.core.errors import UserError
from memdistill.snapshots.feedback import (
    DEFAULT_FAILURE_PATTERNS,
    DEFAULT_SUCCESS_PATTERNS,
    DICT_RULES,
    TEXT_RULES,
    FeedbackReader,
    Verdict,
)
from memdistill.snapshots.feedback.literals import fold, required_literals
from stages.snapshots import SnapshotsConfig, run
from tests.conftest import write_jsonl

READER = FeedbackReader.from_params()
WRONG = f"text:pattern:{DEFAULT_FAILURE_PATTERNS[0]}"
FAILS, ERRORS = f"text:pattern:{DEFAULT_FAILURE_PATTERNS[1]}", f"text:pattern:{DEFAULT_FAILURE_PATTERNS[2]}"
TIMEOUTS, NOT_A_SINGLE = f"text:pattern:{DEFAULT_FAILURE_PATTERNS[3]}", f"text:pattern:{DEFAULT_FAILURE_PATTERNS[4]}"
ZH, ES, DE, FR = (f"text:pattern:{p}" for p in DEFAULT_FAILURE_PATTERNS[5:9])
PASS, ZH_OK, ES_OK, DE_OK, FR_OK = (f"text:success:{p}" for p in DEFAULT_SUCCESS_PATTERNS)
NOT_PASS, NOT_DE_OK, NOT_ZH_OK = (f"text:negated_success:{DEFAULT_SUCCESS_PATTERNS[i]}" for i in (0, 3, 1))
NO_ERRORS, NO_ES, NO_DE, NO_FR, NO_ZH, NO_FAILS, NOT_WRONG = (
    f"text:negated_failure:{DEFAULT_FAILURE_PATTERNS[i]}" for i in (2, 6, 7, 8, 5, 1, 0)
)
TRACEBACK = 'Traceback (most recent call last):\n  File "solve.py", line 3, in <module>\n    main(1)\nTypeError: main() takes 0 positional arguments'

CASES = [
    # What the coding-agent checkpoint misread (issue 20): plural counts, tracebacks, exit codes, crashes, zh, fractions, counts.
    ("2 failures", True, "text:failed_count"),
    ("3 errors", True, "text:failed_count"),
    ("===== 1 failed, 4 passed in 0.21s =====", True, "text:failed_count"),
    ("FAILED (failures=2, errors=1)", True, "text:failed_count"),
    ("Found 1 error in 1 file (checked 3 source files)", True, "text:failed_count"),
    (TRACEBACK, True, "text:traceback"),
    ("running the checks\nValueError: invalid literal for int()", True, "text:traceback"),
    ("java.lang.NullPointerException", True, "text:traceback"),
    ("Command 'pytest' returned non-zero exit status 1.", True, "text:exit_code"),
    ("exit status 1", True, "text:exit_code"),
    ("Process finished with exit code 2", True, "text:exit_code"),
    ("rc=137", True, "text:exit_code"),
    ("Process exited with code 0", False, "text:exit_code"),
    ("Timed out", True, TIMEOUTS),
    ("Timeout after 30 s", True, TIMEOUTS),
    ("Segmentation fault (core dumped)", True, TIMEOUTS),
    ("测试失败", True, ZH),
    ("Not a single test passed", True, NOT_A_SINGLE),
    ({"score": "0/5"}, True, "dict:fraction"),
    ({"score": "3/5"}, True, "dict:fraction"),
    ({"score": "5/5"}, False, "dict:fraction"),
    ({"summary": {"passed": 1, "failed": 3}}, True, "dict:failed_count"),
    ({"summary": {"passed": 4, "failed": 0}}, False, "dict:failed_count"),
    ({"passed": 3, "total": 5}, True, "dict:passed_count"),
    ({"passed": 5, "total": 5}, False, "dict:passed_count"),
    ({"passed": "2/3"}, True, "dict:fraction"),
    ({"failed": 0, "passed": 0}, True, "dict:passed_count"),
    ({"errors": ["E501 line too long"]}, True, "dict:failed_count"),
    ({"errors": []}, False, "dict:failed_count"),
    ({"failed": True}, True, "dict:failed_flag"),
    ({"status": "failed", "log": "all good"}, True, "dict:status"),
    ({"result": "passed", "stderr": "DeprecationWarning: error"}, False, "dict:status"),
    # Read as failed though they passed (issue 20).
    ("Added error handling for missing files; all tests pass", False, PASS),
    ("0 failed, 17 passed", False, "text:zero_failed"),
    ("Fixed the failing test; all tests pass", False, PASS),
    ("Fixed 3 errors; all tests pass", False, PASS),
    ("Found 0 errors", False, "text:zero_failed"),
    ("0 errors", False, "text:zero_failed"),
    ("0 passed, 0 failed", True, "text:zero_passed"),
    ("3 of 5 tests passed", True, "text:fraction"),
    ("5/5 tests passed", False, "text:fraction"),
    ("score: 0/5", True, "text:fraction"),
    # Failed and error in zh, es, de, fr; their negations.
    ("失败", True, ZH),
    ("运行错误", True, ZH),
    ("没有错误", False, NO_ZH),
    ("测试通过", False, ZH_OK),
    ("不成功", True, NOT_ZH_OK),
    ("La prueba falló", True, ES),
    ("Resultado: fallido", True, ES),
    ("Se encontraron errores", True, ES),
    ("sin errores", False, NO_ES),
    ("Todas las pruebas pasaron", False, ES_OK),
    ("Test fehlgeschlagen", True, DE),
    ("Fehler in Zeile 3", True, DE),
    ("keine Fehler", False, NO_DE),
    ("Alle Tests bestanden", False, DE_OK),
    ("Test nicht bestanden", True, NOT_DE_OK),
    ("Le test a échoué", True, FR),
    ("Échec de la compilation", True, FR),
    ("erreur de syntaxe", True, FR),
    ("aucune erreur", False, NO_FR),
    ("pas d'erreur", False, NO_FR),
    ("Le test n'a pas échoué", False, NO_FR),
    ("Tous les tests ont réussi", False, FR_OK),
    # English negation and success words.
    ("no errors", False, NO_ERRORS),
    ("The build finished without failures", False, NO_FAILS),
    ("tests did not pass", True, NOT_PASS),
    ("not ok 1 - parses the header", True, NOT_PASS),
    ("Ran 4 tests in 0.01s\n\nOK", False, PASS),
    ("5 passed in 0.30s", False, PASS),
    # Kept from the first reader: an explicit verdict beats the text; negation; one level of nesting.
    ({"correct": False, "message": "Well done"}, True, "dict:verdict"),
    ({"correct": True, "message": "wrong"}, False, "dict:verdict"),
    ({"correct": "false"}, True, "dict:verdict"),
    ({"passed": 0}, True, "dict:passed_count"),
    ({"passed": 1}, False, "dict:passed_count"),
    ({"passed": True}, False, "dict:passed_flag"),
    ({"exit_code": 1}, True, "dict:exit_code"),
    ({"exit_code": 0, "stderr": "error: deprecated"}, False, "dict:exit_code"),
    ({"returncode": "2"}, True, "dict:exit_code"),
    ({"reward": 0}, True, "dict:score"),
    ({"score": 0.2}, False, "dict:score"),
    ({"reward": "n/a", "message": "Incorrect."}, True, WRONG),
    ({"result": {"success": False}, "message": "done"}, True, "dict:verdict"),
    ({"outcome": {"reward": 3}}, False, "dict:score"),
    ({"result": {"log": "Failed to connect"}}, True, FAILS),
    ("Incorrect. The expected answer was 220.", True, WRONG),
    ("That is not right", True, WRONG),
    ("Correct — 360 is right.", False, PASS),
    ("Success: the script ran and no error was raised.", False, PASS),
    ("This answer is not wrong.", False, NOT_WRONG),
    ("No, that is wrong.", True, WRONG),
    ("Not a failure, but the units are wrong.", True, WRONG),
    ("The answer was 42.", None, "none"),
    (None, None, "missing"),
]


@pytest.mark.parametrize(("feedback", "failed", "rule"), CASES, ids=[str(case[0])[:40] for case in CASES])
def test_reader(feedback: object, failed: bool | None, rule: str) -> None:
    assert READER.read(feedback) == Verdict(failed, rule)  # type: ignore[arg-type]
    assert READER.failed(feedback) is (failed is True)  # type: ignore[arg-type]


def test_every_rule_decides_some_case() -> None:
    """No rule is dead weight: each one decides at least one case of the table."""
    decided = {rule.split(":")[0] + ":" + rule.split(":")[1] for _, _, rule in CASES if ":" in rule}
    names = {f"dict:{f.__name__.removeprefix('dict_')}" for f in DICT_RULES} | {f"text:{f.__name__.removeprefix('text_')}" for f in TEXT_RULES}
    renamed = {"dict:failed": {"dict:failed_count", "dict:failed_flag"}, "dict:passed": {"dict:passed_count", "dict:passed_flag"},
               "dict:score": {"dict:score", "dict:fraction"}, "text:counts": {"text:failed_count", "text:zero_failed", "text:zero_passed"},
               "text:failure_pattern": {"text:pattern"}, "text:success_pattern": {"text:success"}}
    for name in names:
        assert renamed.get(name, {name}) <= decided, name


# --- properties -------------------------------------------------------------------------------------

PASSING = ["all tests pass", "Correct — 360 is right.", "0 failed, 17 passed", "Well done.", "Tests OK", "5/5 tests passed",
           "Todas las pruebas pasaron", "Alle Tests bestanden", "Tous les tests ont réussi", "测试通过", "exit code 0", "Refactored the parser."]
NEGATED = ["no errors", "no error was raised", "without failures", "nothing failed", "sin errores", "ningún error", "keine Fehler",
           "ohne Fehler", "aucune erreur", "pas d'erreur", "没有错误", "无错误", "0 errors", "zero failures", "never failed", "not wrong"]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(PASSING), st.lists(st.sampled_from(NEGATED), min_size=1, max_size=3), st.booleans())
def test_negated_failures_never_turn_a_pass_into_a_failure(passing: str, negated: list[str], before: bool) -> None:
    parts = [*negated, passing] if before else [passing, *negated]
    assert READER.read(". ".join(parts)).failed is False


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 500), st.integers(0, 500))
def test_counts_are_counts(failed: int, passed: int) -> None:
    should_fail = failed > 0 or passed == 0
    assert READER.read(f"{failed} failed, {passed} passed in 1.2s").failed is should_fail
    assert READER.read({"summary": {"passed": passed, "failed": failed}}).failed is should_fail


@given(st.integers(0, 50), st.integers(1, 50))
def test_fractions_fail_below_the_total(done: int, total: int) -> None:
    assert READER.read({"score": f"{done}/{total}"}) == Verdict(done < total, "dict:fraction")
    assert READER.read(f"{done}/{total} tests passed") == Verdict(done < total, "text:fraction")


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@given(st.text(max_size=200) | st.dictionaries(st.sampled_from(["failed", "passed", "score", "status", "total", "log", "x"]), JSON, max_size=5))
def test_every_feedback_gets_a_verdict_and_a_named_rule(feedback: object) -> None:
    verdict = READER.read(feedback)  # type: ignore[arg-type]
    assert verdict.failed in (True, False, None)
    assert re.fullmatch(r"none|missing|(dict|text):\w+(:.+)?", verdict.rule, flags=re.DOTALL), verdict.rule
    assert (verdict.failed is None) == (verdict.rule in ("none", "missing"))


# --- parameters -------------------------------------------------------------------------------------


def test_failure_patterns_given_replace_the_default_words() -> None:
    """Backward compatible: a failure_patterns list is the whole list of failure words (structural rules stay)."""
    reader = FeedbackReader.from_params(failure_patterns=[r"double"])
    assert reader.read("double trouble") == Verdict(True, "text:pattern:double")
    assert reader.read("Wrong, expected 9") == Verdict(None, "none")
    assert reader.read("exit status 1") == Verdict(True, "text:exit_code")
    assert FeedbackReader.from_params(failure_patterns=None).read("wrong") == Verdict(None, "none")


def test_success_patterns_and_keys_extend_the_reader() -> None:
    reader = FeedbackReader.from_params(success_patterns=[r"\bgreen\b"], feedback_keys={"exit_code": ["status_code"], "score": []})
    assert reader.read("the build is green") == Verdict(False, r"text:success:\bgreen\b")
    assert reader.read("the build is not green") == Verdict(True, r"text:negated_success:\bgreen\b")
    assert reader.read("Correct") == Verdict(None, "none")  # the default success words were replaced
    assert reader.read({"status_code": 3}) == Verdict(True, "dict:exit_code")
    assert reader.read({"returncode": 3, "message": "?"}).rule == "none"  # exit_code's defaults replaced
    assert reader.read({"reward": 0}).rule == "none"  # score turned off
    assert reader.read({"correct": False}) == Verdict(True, "dict:verdict")  # roles not given keep their defaults


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"success_patterns": ["(open"]}, r"^params\.yaml: snapshots\.success_patterns: '\(open' is not a valid regular expression"),
        ({"success_patterns": [""]}, r"^params\.yaml: snapshots\.success_patterns: '' matches the empty string$"),
        ({"failure_patterns": ["[z-a]"]}, r"^params\.yaml: snapshots\.failure_patterns: '\[z-a\]' is not a valid regular expression"),
        ({"feedback_keys": {"verdicts": ["ok"]}}, r"^params\.yaml: snapshots\.feedback_keys: unknown role 'verdicts'; expected some of verdict, status"),
        ({"feedback_keys": {"verdict": "ok"}}, r"^params\.yaml: snapshots\.feedback_keys: expected a mapping, got"),
    ],
)
def test_bad_feedback_params_are_one_line(section: dict, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"snapshots": section}))
    assert cli_main(["feedback", "--params", str(params)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(message, err[0].removeprefix("memdistill feedback: error: ").replace(str(tmp_path) + "/", "")), err


def test_params_yaml_lists_the_defaults(repo_root: Path) -> None:
    section = yaml.safe_load((repo_root / "params.yaml").read_text(encoding="utf-8"))["snapshots"]
    defaults = SnapshotsConfig()
    assert section["failure_patterns"] == defaults.failure_patterns == list(DEFAULT_FAILURE_PATTERNS)
    assert section["success_patterns"] == defaults.success_patterns
    assert section["feedback_keys"] == defaults.feedback_keys


# --- rows and the audit table ----------------------------------------------------------------------

HISTORY = [
    {"type": "Observation", "content": "Fix issue #12"},
    {"type": "Action", "content": "diff --git a/x.py"},
    {"type": "Feedback", "content": "0 failed, 17 passed"},
    {"type": "Observation", "content": "Fix issue #13"},
    {"type": "Action", "content": "diff --git a/y.py"},
    {"type": "Feedback", "content": TRACEBACK},
    {"type": "Observation", "content": "Fix issue #14"},
    {"type": "Action", "content": "diff"},
    {"type": "Feedback", "content": {"summary": {"passed": 1, "failed": 3}}},
    {"type": "Observation", "content": "Fix issue #15"},
    {"type": "Action", "content": "diff"},
    {"type": "Feedback", "content": "2 failed, 15 passed; mail ada@example.com"},
    {"type": "Observation", "content": "Fix issue #16"},
    {"type": "Action", "content": "diff"},
    {"type": "Feedback", "content": "0 failed, 20 passed"},
    {"type": "Observation", "content": "Fix issue #17"},
]


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    folder = tmp_path / "ep_000010"
    folder.mkdir()
    write_jsonl(folder / "memory_10.jsonl", HISTORY)
    return folder


def test_rows_record_the_verdict_and_the_rule(checkpoint: Path, tmp_path: Path) -> None:
    output = tmp_path / "prompts.jsonl"
    run(SnapshotsConfig(checkpoint_dir=str(checkpoint), tokenizer=None, max_prompt_tokens=None, strategy="failure_focus",
                        max_memory_samples=2), output)
    rows = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert [row["metadata"]["feedback"] for row in rows] == [
        {"failed": False, "rule": "text:zero_failed"},
        {"failed": True, "rule": "text:traceback"},
        {"failed": True, "rule": "dict:failed_count"},
        {"failed": True, "rule": "text:failed_count"},
        {"failed": False, "rule": "text:zero_failed"},
        {"failed": None, "rule": "missing"},
    ]
    assert [row["metadata"]["failed"] for row in rows] == [False, True, True, True, False, False]
    # failure_focus ranks by the same reader: the two most recent failures (samples 3 and 2).
    assert rows[5]["metadata"]["memory_samples_kept"] == [[2, 3]]


def test_feedback_command_prints_forms_verdicts_and_rules(
    checkpoint: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "160")
    assert cli_main(["feedback", "--checkpoint-dir", str(checkpoint)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    # "0 failed, 17 passed" and "0 failed, 20 passed" are one form; "2 failed, ..." is read otherwise: its own row.
    zero = next(line for line in lines if "0 failed, 17 passed" in line)
    assert re.search(r"^\s*2 │ passed\s+│ text:zero_failed\s+│\s+0 │", zero), zero
    assert re.search(r"^\s*1 │ failed\s+│ text:failed_count\s+│\s+3 │ 2 failed, 15 passed; mail \[REDACTED\]", out, re.M), out
    assert re.search(r"1 │ failed\s+│ text:traceback\s+│\s+1 │ Traceback \(most recent call last\)", out), out
    assert re.search(r'1 │ failed\s+│ dict:failed_count\s+│\s+2 │ \{"summary":\{"passed":1,"failed":3\}\}', out), out
    assert re.search(r"1 │ unknown\s+│ missing\s+│\s+5 │ \(no feedback\)", out), out
    assert lines[-1] == "memory_10.jsonl: 6 samples, 5 feedback forms: 3 failed, 2 passed, 1 unknown (1 without feedback)"


def test_feedback_command_reads_the_params_and_flags(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "160")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"snapshots": {"checkpoint_dir": str(checkpoint), "feedback_keys": {"failed": []}}}))
    assert cli_main(["feedback", "--params", str(params), "--max-chars", "12"]) == 0
    out = capsys.readouterr().out
    # With the failed keys off, {"passed": 1, "failed": 3} is read from its passed count alone.
    assert re.search(r'passed\s+│ dict:passed_count\s+│\s+2 │ \{"summary":…', out), out
    # A flag replaces the params file's value: no passed keys either, and nothing else reads that dict.
    assert cli_main(["feedback", "--params", str(params), "--feedback-keys", "{failed: [], passed: []}"]) == 0
    assert re.search(r'unknown\s+│ none\s+│\s+2 │ \{"summary"', capsys.readouterr().out)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--checkpoint-dir", "{tmp}/nowhere"], r"nowhere: checkpoint folder does not exist"),
        (["--checkpoint-dir", "{tmp}/empty"], r"No memory snapshots found in .*empty"),
        (["--checkpoint-dir", "{checkpoint}", "--snapshot", "memory_99.jsonl"], r"memory_99\.jsonl"),
        (["--checkpoint-dir", "{checkpoint}", "--failure-patterns", "(x"], r"--failure-patterns: '\(x' is not a valid regular expression"),
    ],
)
def test_feedback_command_bad_input_is_one_line(
    args: list[str], message: str, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    code = cli_main(["feedback", *(a.format(tmp=tmp_path, checkpoint=checkpoint) for a in args)])
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert code == 2 and captured.out == ""
    assert len(err) == 1 and err[0].startswith("memdistill feedback: error: ") and re.search(message, err[0]), err


def test_reader_rejects_an_unknown_role() -> None:
    with pytest.raises(UserError, match=r"^feedback_keys: unknown role 'exit'; expected some of verdict, status, failed"):
        FeedbackReader.from_params(feedback_keys={"exit": ["rc"]})


# --- the literal shortcut -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "literals"),
    [
        (r"\bfail(?:s|ed)?\b", {"fail"}),
        (r"\b(?:wrong|not (?:correct|right))\b", {"wrong", "correct", "right"}),
        (r"[ab]xyz+", {"xy"}),
        (r"TIMEOUT", {"timeout"}),
        (r"(?:x|y*)", None),
        (r".*", None),
        (r"\d+ failed", {" failed"}),
    ],
)
def test_required_literals(pattern: str, literals: set[str] | None) -> None:
    assert required_literals(pattern) == (frozenset(literals) if literals is not None else None)


WORDS = ["fail", "FAILED", "Error", "errors", "wrong", "Timed out", "失败", "échoué", "ÉCHEC", "Fehler", "falló", "ıncorrect",
         "paſſed", "ok", "not", "no", "pass", "straße", "İ", "correct", "bestanden", "通过", "0", "3/5", " ", "\n", ".", "-"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(WORDS) | st.text(max_size=4), max_size=12))
def test_the_literal_shortcut_never_skips_a_match(parts: list[str]) -> None:
    """Sound: whenever a default pattern matches, the folded text holds one of its literals."""
    text = " ".join(parts)
    for pattern in READER.failure_patterns + READER.success_patterns:
        literals = required_literals(pattern.pattern)
        if literals is not None and pattern.search(text):
            assert any(word in fold(text) for word in literals), (pattern.pattern, text)
