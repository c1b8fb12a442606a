"""The snapshots stage end to end: prompts.jsonl content, budget, selection, redaction, bad input, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memdistill.cli import main as cli_main
from memdistill.errors import UserError
from memdistill.prompts import FunctionCounter, Message, render_entry, teacher_messages
from memdistill.snapshot import load_snapshot
from stages.snapshots import SnapshotsConfig, iter_prompt_rows, run, select_samples
from tests.conftest import write_jsonl

HISTORY = [
    {"type": "Observation", "content": "Mail ada@example.com: what is 2+2?"},
    {"type": "Action", "content": "4"},
    {"type": "Feedback", "content": {"correct": True}},
    {"type": "Observation", "content": "What is 3*3?"},
    {"type": "Action", "content": "6, key sk-abcdefghijklmnopqrst"},
    {"type": "Feedback", "content": "Wrong, expected 9; ask bob@example.org"},
    {"type": "observation", "content": {"question": "10-7?", "hint": "subtract"}},
    {"type": "Action", "content": "3"},
    {"type": "Feedback", "content": {"reward": 1}},
    {"type": "Observation", "content": "What is 5/5?"},
]
REDACT = [r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}", r"sk-[A-Za-z0-9_-]{16,}"]


def words(text: str) -> int:
    return len(text.split())


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    folder = tmp_path / "ep_000200"
    folder.mkdir()
    write_jsonl(folder / "memory_9.jsonl", HISTORY[:3])
    write_jsonl(folder / "memory_10.jsonl", HISTORY)
    return folder


def config(checkpoint: Path, **overrides: object) -> SnapshotsConfig:
    values: dict[str, object] = {"checkpoint_dir": str(checkpoint), "system_prompt": "You are a calculator."}
    values.update(overrides)
    return SnapshotsConfig(**values)  # type: ignore[arg-type]


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_exclude_current_rows(checkpoint: Path, tmp_path: Path) -> None:
    output = tmp_path / "prompts.jsonl"
    summary = run(config(checkpoint), output)
    rows = rows_of(output)
    assert summary.rows == 4 and [row["sample_idx"] for row in rows] == [0, 1, 2, 3]
    second = rows[1]
    assert second["teacher_messages"][1]["content"] == (
        "Here is a list of your previous experiences:\n\n"
        "OBSERVATION: Mail ada@example.com: what is 2+2?\nACTION: 4\nFEEDBACK: {\"correct\":true}\n"
        'OBSERVATION: {"question":"10-7?","hint":"subtract"}\nACTION: 3\nFEEDBACK: {"reward":1}\n'
        "OBSERVATION: What is 5/5?\n\nHere is the current observation:\n\nWhat is 3*3?"
    )
    assert second["teacher_messages"][0]["content"].startswith("You are a calculator.\n\nYou will be given")
    assert second["student_messages"] == [
        {"role": "system", "content": "You are a calculator."},
        {"role": "user", "content": "What is 3*3?"},
    ]
    meta = second["metadata"]
    assert meta == {
        "strategy": "exclude_current",
        "strategy_params": {},
        "snapshot": "memory_10.jsonl",
        "snapshot_sha256": load_snapshot(checkpoint / "memory_10.jsonl").sha256,
        "sample_entries": [3, 5],
        "memory_entries": [[0, 2], [6, 9]],
        "memory_size_entries": 7,
        "memory_size_chars": len(second["teacher_messages"][1]["content"].split("\n\n")[1]),
        "max_prompt_tokens": None,
        "token_counter": None,
        "prompt_tokens": None,
        "dropped_for_budget": 0,
        "over_budget": False,
        "reference_action": "6, key sk-abcdefghijklmnopqrst",
        "reference_feedback": "Wrong, expected 9; ask bob@example.org",
        "failed": True,
        "missing": [],
        "redactions": {"memory": 0, "observation": 0, "reference": 0},
    }
    assert rows[2]["student_messages"][1]["content"] == '{"question":"10-7?","hint":"subtract"}'
    assert rows[3]["metadata"]["missing"] == ["action", "feedback"]
    assert rows[3]["metadata"]["reference_action"] is None


def test_rolling_and_failure_focus_record_their_params(checkpoint: Path, tmp_path: Path) -> None:
    output = tmp_path / "prompts.jsonl"
    run(config(checkpoint, strategy="rolling_window", window_k=2), output)
    assert [row["metadata"]["memory_entries"] for row in rows_of(output)] == [[], [[1, 2]], [[4, 5]], [[7, 8]]]
    assert rows_of(output)[0]["metadata"]["strategy_params"] == {"window_k": 2}
    assert "No previous experiences." in rows_of(output)[0]["teacher_messages"][1]["content"]
    run(config(checkpoint, strategy="failure_focus", max_memory_samples=1), output)
    rows = rows_of(output)
    assert [row["metadata"]["memory_entries"] for row in rows] == [[[3, 5]], [[9, 9]], [[3, 5]], [[3, 5]]]
    assert rows[0]["metadata"]["strategy_params"]["max_memory_samples"] == 1


def test_same_inputs_give_byte_identical_output(checkpoint: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    settings_ = dict(max_samples=2, sample_selection="random", seed=7, max_prompt_tokens=40, redact_patterns=REDACT)
    run(config(checkpoint, **settings_), first, count_tokens=words)
    run(config(checkpoint, **settings_), second, count_tokens=words)
    assert first.read_bytes() == second.read_bytes()


def test_sample_selection() -> None:
    assert select_samples(10, None, "first", 0) == list(range(10))
    assert select_samples(10, 20, "random", 0) == list(range(10))
    assert select_samples(10, 3, "first", 0) == [0, 1, 2]
    assert select_samples(10, 3, "last", 0) == [7, 8, 9]
    picked = select_samples(100, 5, "random", 3)
    assert picked == sorted(picked) and len(set(picked)) == 5
    assert picked == select_samples(100, 5, "random", 3)
    assert picked != select_samples(100, 5, "random", 4)


def test_selection_keeps_the_chosen_rows_in_order(checkpoint: Path, tmp_path: Path) -> None:
    output = tmp_path / "prompts.jsonl"
    run(config(checkpoint, max_samples=2, sample_selection="last"), output)
    assert [row["sample_idx"] for row in rows_of(output)] == [2, 3]


def test_redaction_reaches_every_text_and_is_counted(checkpoint: Path, tmp_path: Path) -> None:
    output = tmp_path / "prompts.jsonl"
    run(config(checkpoint, strategy="full_memory", redact_patterns=REDACT), output)
    text = output.read_text(encoding="utf-8")
    assert "@example" not in text and "sk-abc" not in text
    rows = rows_of(output)
    assert rows[0]["student_messages"][1]["content"] == "Mail [REDACTED]: what is 2+2?"
    assert rows[0]["metadata"]["redactions"] == {"memory": 3, "observation": 1, "reference": 0}
    assert rows[1]["metadata"]["redactions"] == {"memory": 3, "observation": 0, "reference": 2}
    assert rows[1]["metadata"]["reference_feedback"] == "Wrong, expected 9; ask [REDACTED]"


def test_budget_drops_the_fewest_oldest_entries(checkpoint: Path, tmp_path: Path) -> None:
    output = tmp_path / "prompts.jsonl"
    cfg = config(checkpoint, strategy="full_memory", max_prompt_tokens=75)
    run(cfg, output, count_tokens=words)
    counter = FunctionCounter(words, name="words")
    lines = [render_entry(e) for e in load_snapshot(checkpoint / "memory_10.jsonl").entries]
    for row in rows_of(output):
        meta = row["metadata"]
        dropped = meta["dropped_for_budget"]
        assert 0 < dropped < len(lines) and meta["token_counter"] == "words" and not meta["over_budget"]
        assert meta["memory_entries"] == [[dropped, len(lines) - 1]]
        teacher = [Message(**m) for m in row["teacher_messages"]]
        assert meta["prompt_tokens"] == counter.messages(teacher) <= 75
        observation = row["student_messages"][1]["content"]
        one_more = teacher_messages(cfg.system_prompt, lines[dropped - 1 :], observation)
        assert counter.messages(one_more) > 75


def test_observation_too_long_for_the_budget_is_kept_and_flagged(checkpoint: Path, tmp_path: Path) -> None:
    output = tmp_path / "prompts.jsonl"
    run(config(checkpoint, max_prompt_tokens=5), output, count_tokens=words)
    meta = rows_of(output)[0]["metadata"]
    assert meta["over_budget"] and meta["memory_entries"] == [] and meta["dropped_for_budget"] == 7


def test_estimate_is_used_without_a_tokenizer(checkpoint: Path, tmp_path: Path) -> None:
    output = tmp_path / "prompts.jsonl"
    run(config(checkpoint, max_prompt_tokens=100, tokenizer=None), output)
    meta = rows_of(output)[0]["metadata"]
    assert meta["token_counter"] == "estimate" and meta["prompt_tokens"] <= 100


def test_student_view_teacher_keeps_the_teacher_prompt(checkpoint: Path, tmp_path: Path) -> None:
    output = tmp_path / "prompts.jsonl"
    run(config(checkpoint, student_view="teacher"), output)
    row = rows_of(output)[0]
    assert row["student_messages"] == row["teacher_messages"]


def test_named_snapshot_is_used(checkpoint: Path, tmp_path: Path) -> None:
    output = tmp_path / "prompts.jsonl"
    run(config(checkpoint, snapshot="memory_9.jsonl"), output)
    rows = rows_of(output)
    assert len(rows) == 1 and rows[0]["metadata"]["snapshot"] == "memory_9.jsonl"


# --- property: sample i's action never reaches its exclude_current prompt -----------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.sampled_from(["Observation", "Action", "Feedback", "Note"]), min_size=1, max_size=25),
    st.one_of(st.none(), st.integers(20, 200)),
)
def test_exclude_current_prompt_never_shows_the_samples_own_action(
    tmp_path: Path, kinds: list[str], max_prompt_tokens: int | None
) -> None:
    kinds = ["Observation", *kinds]
    folder = tmp_path / "ep"
    folder.mkdir(exist_ok=True)
    path = write_jsonl(folder / "memory_1.jsonl", [{"type": k, "content": f"{k.lower()} number {i}"} for i, k in enumerate(kinds)])
    snapshot = load_snapshot(path)
    cfg = config(folder, max_prompt_tokens=max_prompt_tokens)
    for row in iter_prompt_rows(snapshot, cfg, FunctionCounter(words, name="words")):
        sample = snapshot.samples[row["sample_idx"]]
        memory_block = row["teacher_messages"][1]["content"].split("\n\nHere is the current observation:")[0]
        for index in sample.entry_indices:
            assert f"number {index}\n" not in memory_block + "\n"


# --- bad input: one line naming file and line/field, exit 2, no output --------------------------------


def cli(*args: str) -> int:
    return cli_main(["snapshots", *args])


BAD_LINES = {
    "not_json": ('{"type": "Observation", "content": "q"}\n{"type": "Action", "content": "a"\n', r"memory_1\.jsonl:2: not valid JSON"),
    "no_type": ('{"type": "Observation", "content": "q"}\n\n{"content": "a"}\n', r"memory_1\.jsonl:3: entry has no 'type' field"),
    "no_content": ('{"type": "Observation"}\n', r"memory_1\.jsonl:1: entry has no 'content' field"),
    "no_observation": ('{"type": "Action", "content": "a"}\n', r"memory_1\.jsonl: no Observation entries"),
}


def assert_failed_cleanly(code: int, capsys: pytest.CaptureFixture[str], pattern: str, out_dir: Path) -> None:
    import re

    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and re.search(pattern, err[0]), err
    assert err[0].startswith("memdistill snapshots: error: ")
    assert not any(p.name.endswith(".tmp") or p.name == "prompts.jsonl" for p in out_dir.iterdir())


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_snapshot_lines(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text, pattern = BAD_LINES[case]
    folder = tmp_path / "ep"
    folder.mkdir()
    (folder / "memory_1.jsonl").write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    code = cli("--checkpoint-dir", str(folder), "--output", str(out / "prompts.jsonl"))
    assert_failed_cleanly(code, capsys, pattern, out)


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["--strategy", "newest"], r"--strategy: unknown strategy 'newest'"),
        (["--strategy", "rolling_window", "--window-k", "0"], r"--window-k: expected an integer >= 1, got 0$"),
        (["--max-samples", "0"], r"--max-samples: expected an integer >= 1 or null, got 0$"),
        (["--max-prompt-tokens", "0"], r"--max-prompt-tokens: expected an integer >= 1 or null, got 0$"),
        (["--snapshot", "memory_3.jsonl"], r"snapshot 'memory_3\.jsonl' not found"),
    ],
)
def test_bad_parameters(args: list[str], pattern: str, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    code = cli("--checkpoint-dir", str(checkpoint), "--output", str(out / "prompts.jsonl"), *args)
    assert_failed_cleanly(code, capsys, pattern, out)


def test_missing_and_empty_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    code = cli("--checkpoint-dir", str(tmp_path / "missing"), "--output", str(out / "prompts.jsonl"))
    assert_failed_cleanly(code, capsys, r"missing: checkpoint folder does not exist", out)
    (tmp_path / "empty").mkdir()
    code = cli("--checkpoint-dir", str(tmp_path / "empty"), "--output", str(out / "prompts.jsonl"))
    assert_failed_cleanly(
        code, capsys, r"No memory snapshots found in .*empty: point checkpoint_dir at an episode checkpoint such as ep_000200$", out
    )


def test_folder_of_episodes(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    code = cli("--checkpoint-dir", str(checkpoint.parent), "--output", str(out / "prompts.jsonl"))
    assert_failed_cleanly(code, capsys, r"holds episode folders \(ep_000200\).*point checkpoint_dir at one of them", out)


@pytest.mark.parametrize(
    ("section", "pattern"),
    [
        ({"window_k": "three"}, r"params\.yaml: snapshots\.window_k: expected an integer >= 1, got \"three\"$"),
        ({"failure_patterns": ["(unclosed"]}, r"snapshots\.failure_patterns: '\(unclosed' is not a valid regular expression"),
        ({"redact_patterns": [".*"]}, r"snapshots\.redact_patterns: '\.\*' matches the empty string"),
        ({"sample_selection": "middle"}, r"snapshots\.sample_selection: expected one of first, last, random, got \"middle\"$"),
        ({"student_view": "both"}, r"snapshots\.student_view: expected one of observation_only, teacher, got \"both\"$"),
        ({"windowk": 3}, r"params\.yaml: snapshots\.windowk: unknown parameter; expected some of checkpoint_dir, "),
        ({"failure_patterns": 5}, r"snapshots\.failure_patterns: expected a list of strings or null, got 5$"),
        ({"redact_patterns": "sk-.*"}, r"snapshots\.redact_patterns: expected a list of strings or null, got \"sk-\.\*\"$"),
        ({"max_prompt_tokens": 8192.0}, r"snapshots\.max_prompt_tokens: expected an integer >= 1 or null, got 8192\.0$"),
        ({"max_memory_samples": -1}, r"snapshots\.max_memory_samples: expected an integer >= 0, got -1$"),
    ],
)
def test_bad_params_file(
    section: dict, pattern: str, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"snapshots": {"checkpoint_dir": str(checkpoint), **section}}))
    code = cli("--params", str(params), "--output", str(out / "prompts.jsonl"))
    assert_failed_cleanly(code, capsys, pattern, out)


def test_null_pattern_lists_mean_none(checkpoint: Path, tmp_path: Path) -> None:
    output = tmp_path / "prompts.jsonl"
    run(config(checkpoint, redact_patterns=None, failure_patterns=None), output)
    rows = rows_of(output)
    assert "ada@example.com" in rows[0]["student_messages"][1]["content"]
    assert [row["metadata"]["failed"] for row in rows] == [False, False, False, False]  # only dict flags count


def test_failed_run_leaves_an_existing_output_untouched(checkpoint: Path, tmp_path: Path) -> None:
    output = tmp_path / "prompts.jsonl"
    output.write_text("previous\n")
    (checkpoint / "memory_11.jsonl").write_text('{"type": "Observation", "content": "q"}\nnot json\n')
    with pytest.raises(UserError, match=r"memory_11\.jsonl:2"):
        run(config(checkpoint), output)
    assert output.read_text() == "previous\n"


def test_cli_flags_override_params(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"snapshots": {"checkpoint_dir": "nowhere", "strategy": "full_memory", "max_samples": 3}}))
    output = tmp_path / "prompts.jsonl"
    code = cli("--params", str(params), "--checkpoint-dir", str(checkpoint), "--strategy", "rolling_window",
               "--window-k", "1", "--max-samples", "2", "--output", str(output))
    assert code == 0
    rows = rows_of(output)
    assert [row["metadata"]["memory_entries"] for row in rows] == [[], [[2, 2]]]


def test_example_checkpoint_with_the_embedded_tokenizer(example_checkpoint: Path, tmp_path: Path) -> None:
    """The real teacher tokenizer: every prompt fits and the count matches the chat-templated prompt."""
    from memdistill.models import load_tokenizer

    output = tmp_path / "prompts.jsonl"
    cfg = config(example_checkpoint, max_prompt_tokens=300, tokenizer="smollm2-135m-instruct", max_samples=3, sample_selection="last")
    run(cfg, output)
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    rows = rows_of(output)
    assert [row["sample_idx"] for row in rows] == [45, 46, 47]
    for row in rows:
        ids = tokenizer.apply_chat_template(row["teacher_messages"], add_generation_prompt=True, tokenize=False)
        count = len(tokenizer(ids, add_special_tokens=False)["input_ids"])
        assert row["metadata"]["prompt_tokens"] == count <= 300
        assert row["metadata"]["dropped_for_budget"] > 0
    assert rows[-1]["metadata"]["missing"] == ["feedback"]


class SkewedCounter:
    """Per-line counts off by `skew` tokens from what the rendered prompt really costs (words + 10)."""

    name = "skewed"

    def __init__(self, skew: int) -> None:
        self.skew = skew

    def texts(self, texts: list[str]) -> list[int]:
        return [max(0, words(text) + self.skew) for text in texts]

    def messages(self, messages: list[Message]) -> int:
        return sum(words(m.content) for m in messages) + 10


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(1, 9), min_size=1, max_size=15), st.integers(-1, 3), st.integers(0, 80))
def test_fit_to_budget_corrects_a_skewed_first_cut(line_words: list[int], skew: int, limit: int) -> None:
    import itertools

    from memdistill.strategies import MemoryView
    from stages.snapshots import fit_to_budget

    lines = [" ".join(["w"] * n) for n in line_words]
    counter = SkewedCounter(skew)
    tokens_before = [0, *itertools.accumulate(counter.texts([line + "\n" for line in lines]))]

    def render(view: MemoryView) -> list[Message]:
        return teacher_messages("S", [lines[i] for i in view], "obs")

    full = MemoryView.of([(0, len(lines))])
    fixed = counter.messages(render(MemoryView())) - words("No previous experiences.")
    kept, teacher, tokens, dropped = fit_to_budget(full, render, counter, tokens_before, limit, fixed)
    fitting = [d for d in range(len(lines) + 1) if counter.messages(render(full.without_oldest(d))) <= limit]
    assert kept == full.without_oldest(dropped) and tokens == counter.messages(teacher) == counter.messages(render(kept))
    assert dropped == (fitting[0] if fitting else len(lines))
