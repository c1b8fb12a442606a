"""The snapshots stage end to end: prompts.jsonl content, budget, selection, redaction, bad input, CLI."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memdistill.cli import main as cli_main
from memdistill.core.errors import UserError
from memdistill.snapshots.checkpoint import load_snapshot
from memdistill.snapshots.prompts import FunctionCounter, Message, estimate_tokens, render_entry, teacher_messages
from memdistill.snapshots.rows import iter_prompt_rows, select_samples
from stages.snapshots import SnapshotsConfig, run
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
    # No budget, the 4-characters estimate, no redaction, every sample: each test turns on what it checks.
    values: dict[str, object] = {
        "checkpoint_dir": str(checkpoint),
        "system_prompt": "You are a calculator.",
        "max_prompt_tokens": None,
        "tokenizer": None,
        "max_samples": None,
        "redact_patterns": [],
    }
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
    memory_block = second["teacher_messages"][1]["content"].split("\n\n")[1]
    memory_tokens = sum(estimate_tokens(line + "\n") for line in memory_block.split("\n"))
    assert meta == {
        "strategy": "exclude_current",
        "strategy_params": {},
        "checkpoint": str(checkpoint),
        "snapshot": "memory_10.jsonl",
        "snapshot_sha256": load_snapshot(checkpoint / "memory_10.jsonl").sha256,
        "system_prompt": "You are a calculator.",
        "system_prompt_source": "system_prompt",
        "observation_source": "memory",
        "observation_idx": 1,
        "view": 0,
        "views": 1,
        "sample_entries": [3, 5],
        "memory_entries": [[0, 2], [6, 9]],
        "memory_size_entries": 7,
        "memory_size_chars": len(memory_block),
        "memory_samples_wanted": [[0, 0], [2, 3]],
        "memory_samples_kept": [[0, 0], [2, 3]],
        "memory_tokens_wanted": memory_tokens,
        "memory_tokens_kept": memory_tokens,
        "memory_coverage": 1.0,
        "max_prompt_tokens": None,
        "token_counter": "estimate",
        "prompt_tokens": FunctionCounter(estimate_tokens).messages([Message(**m) for m in second["teacher_messages"]]),
        "dropped_for_budget": 0,
        "observation_tokens": estimate_tokens("What is 3*3?"),
        "observation_tokens_kept": estimate_tokens("What is 3*3?"),
        "reference_action": "6, key sk-abcdefghijklmnopqrst",
        "reference_feedback": "Wrong, expected 9; ask bob@example.org",
        "failed": True,
        "feedback": {"failed": True, "rule": r"text:pattern:\b(?:incorrect|wrong|not (?:correct|right))\b"},
        "missing": [],
        "redactions": {"memory": 0, "observation": 0, "reference": 0},
    }
    assert rows[2]["student_messages"][1]["content"] == '{"question":"10-7?","hint":"subtract"}'
    assert rows[3]["metadata"]["missing"] == ["action", "feedback"]
    assert rows[3]["metadata"]["reference_action"] is None


def test_rolling_and_failure_focus_record_their_params(checkpoint: Path, tmp_path: Path) -> None:
    output = tmp_path / "prompts.jsonl"
    run(config(checkpoint, strategy="rolling_window", window_k=3), output)
    assert [row["metadata"]["memory_entries"] for row in rows_of(output)] == [[], [[0, 2]], [[3, 5]], [[6, 8]]]
    assert rows_of(output)[0]["metadata"]["strategy_params"] == {"window_k": 3}
    assert "No previous experiences." in rows_of(output)[0]["teacher_messages"][1]["content"]
    run(config(checkpoint, strategy="failure_focus", max_memory_samples=1), output)
    rows = rows_of(output)
    assert [row["metadata"]["memory_entries"] for row in rows] == [[[3, 5]], [[9, 9]], [[3, 5]], [[3, 5]]]
    assert rows[0]["metadata"]["strategy_params"]["max_memory_samples"] == 1


def test_same_inputs_give_byte_identical_output(checkpoint: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    settings_ = dict(max_samples=2, sample_selection="random", seed=7, max_prompt_tokens=70, redact_patterns=REDACT)
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


def test_budget_keeps_the_newest_whole_samples_that_fit(checkpoint: Path, tmp_path: Path) -> None:
    output = tmp_path / "prompts.jsonl"
    cfg = config(checkpoint, strategy="full_memory", max_prompt_tokens=75)
    run(cfg, output, count_tokens=words)
    counter = FunctionCounter(words, name="words")
    snapshot = load_snapshot(checkpoint / "memory_10.jsonl")
    lines = [render_entry(e) for e in snapshot.entries]
    starts = [s.start for s in snapshot.samples]

    def prompt_tokens(samples: list[int], observation: str) -> int:
        memory = [lines[j] for i in sorted(samples) for j in snapshot.samples[i].entry_indices]
        return counter.messages(teacher_messages(cfg.system_prompt, memory, observation))

    for row in rows_of(output):
        meta = row["metadata"]
        own = row["sample_idx"]
        observation = row["student_messages"][1]["content"]
        kept = [i for first, last in meta["memory_samples_kept"] for i in range(first, last + 1)]
        assert meta["memory_samples_wanted"] == [[0, 3]] and meta["token_counter"] == "words"
        assert own in kept and 0 < meta["dropped_for_budget"] == 4 - len(kept)
        assert all(first in starts for first, _ in meta["memory_entries"])
        assert meta["memory_coverage"] == round(meta["memory_tokens_kept"] / meta["memory_tokens_wanted"], 6) < 1
        teacher = [Message(**m) for m in row["teacher_messages"]]
        assert meta["prompt_tokens"] == counter.messages(teacher) <= 75
        # Its own sample first, then the others newest first, each kept exactly when it fits beside those kept.
        walk: list[int] = []
        for i in [own] + [i for i in (3, 2, 1, 0) if i != own]:
            if prompt_tokens(walk + [i], observation) <= 75:
                walk.append(i)
        assert sorted(walk) == kept


def test_prompt_over_the_budget_even_without_memory_is_left_out(checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    output = tmp_path / "prompts.jsonl"
    with pytest.raises(UserError, match=r"all 4 selected samples left out \(sample_idx 0, 1, 2, 3\): the system prompt, the prompt's "
                       r"headers and the chat template alone are \d+ tokens, over max_prompt_tokens 5 even with an empty memory; shorten system_prompt, or raise max_prompt_tokens \(now 5\)"):
        run(config(checkpoint, max_prompt_tokens=5), output, count_tokens=words)
    assert not output.exists()
    (checkpoint / "memory_11.jsonl").write_text(
        (checkpoint / "memory_10.jsonl").read_text() + json.dumps({"type": "Observation", "content": "long " * 100}) + "\n"
    )
    summary = run(config(checkpoint, max_prompt_tokens=80), output, count_tokens=words)
    assert [row["sample_idx"] for row in rows_of(output)] == [0, 1, 2, 3] and summary.over_budget == [4]
    # The observation is named as what is too long, not the system prompt.
    assert "1 samples left out (sample_idx 4): their observation alone is too long (100 tokens) for max_prompt_tokens 80" in caplog.text
    assert "set snapshots.max_observation_tokens below 25 to cut long observations from the middle, or raise max_prompt_tokens (now 80)" in caplog.text
    assert "shorten system_prompt" not in caplog.text
    assert "wrote 4 rows for 4 of 5 samples" in caplog.text


def test_max_observation_tokens_cuts_a_long_observation_from_the_middle(checkpoint: Path, tmp_path: Path) -> None:
    long_log = " ".join(f"line{i}" for i in range(100))
    (checkpoint / "memory_11.jsonl").write_text(
        (checkpoint / "memory_10.jsonl").read_text() + json.dumps({"type": "Observation", "content": long_log}) + "\n"
    )
    output = tmp_path / "prompts.jsonl"
    summary = run(config(checkpoint, max_prompt_tokens=80, max_observation_tokens=20), output, count_tokens=words)
    rows = rows_of(output)
    assert [row["sample_idx"] for row in rows] == [0, 1, 2, 3, 4] and summary.observations_cut == 1 and not summary.over_budget
    last = rows[-1]
    student = last["student_messages"][1]["content"]
    assert student.startswith("line0 line1") and student.endswith("line98 line99")
    assert f"\n[... {100 - last['metadata']['observation_tokens_kept']} tokens cut ...]\n" in student
    assert words(student) <= 20
    assert last["metadata"]["observation_tokens"] == 100 and last["metadata"]["observation_tokens_kept"] == words(student) - 5
    # The teacher sees the same observation text as the student.
    assert last["teacher_messages"][1]["content"].endswith("Here is the current observation:\n\n" + student)
    # Short observations are untouched, with their count recorded.
    first = rows[0]["metadata"]
    assert first["observation_tokens"] == first["observation_tokens_kept"] == words(rows[0]["student_messages"][1]["content"])
    assert rows[0]["student_messages"][1]["content"] == "Mail ada@example.com: what is 2+2?"



def test_an_observation_still_too_long_after_the_cut_names_the_setting(
    checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (checkpoint / "memory_11.jsonl").write_text(
        (checkpoint / "memory_10.jsonl").read_text() + json.dumps({"type": "Observation", "content": "long " * 100}) + "\n"
    )
    summary = run(config(checkpoint, max_prompt_tokens=80, max_observation_tokens=40), tmp_path / "prompts.jsonl", count_tokens=words)
    assert summary.over_budget == [4] and summary.observations_cut == 1
    assert "their observation alone is too long (40 tokens) for max_prompt_tokens 80" in caplog.text
    assert "lower snapshots.max_observation_tokens (40) below 25" in caplog.text


def test_max_observation_tokens_is_checked(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli("--checkpoint-dir", str(checkpoint), "--max-observation-tokens", "3", "--output", str(tmp_path / "p.jsonl"))
    assert code == 2 and "--max-observation-tokens: expected an integer >= 16 or null, got 3" in capsys.readouterr().err


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
    st.one_of(st.none(), st.integers(60, 200)),  # an empty-memory prompt is 58 words: every sample fits
)
def test_exclude_current_prompt_never_shows_the_samples_own_action(
    tmp_path: Path, kinds: list[str], max_prompt_tokens: int | None
) -> None:
    kinds = ["Observation", *kinds]
    folder = tmp_path / "ep"
    folder.mkdir(exist_ok=True)
    path = write_jsonl(folder / "memory_1.jsonl", [{"type": k, "content": f"{k.lower()} number {i}"} for i, k in enumerate(kinds)])
    snapshot = load_snapshot(path)
    options = config(folder, max_prompt_tokens=max_prompt_tokens).row_options()
    rows = list(iter_prompt_rows(snapshot, options, FunctionCounter(words, name="words"), ("You are an agent.", "test"), limit=max_prompt_tokens))
    assert len(rows) == kinds.count("Observation")
    for row in rows:
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
        (["--max-prompt-tokens", "0"], r"--max-prompt-tokens: expected an integer >= 1 or 'auto' or null, got 0$"),
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
        ({"max_prompt_tokens": 8192.0}, r"snapshots\.max_prompt_tokens: expected an integer >= 1 or 'auto' or null, got 8192\.0$"),
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
               "--window-k", "3", "--max-samples", "2", "--output", str(output))
    assert code == 0
    rows = rows_of(output)
    assert [row["metadata"]["memory_entries"] for row in rows] == [[], [[0, 2]]]


def test_example_checkpoint_with_the_embedded_tokenizer(example_checkpoint: Path, tmp_path: Path) -> None:
    """The real teacher tokenizer: every prompt fits and the count matches the chat-templated prompt."""
    from memdistill.core.models import load_tokenizer

    output = tmp_path / "prompts.jsonl"
    cfg = config(example_checkpoint, max_prompt_tokens=300, tokenizer="smollm2-135m-instruct", max_samples=3, sample_selection="last")
    run(cfg, output)
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    rows = rows_of(output)
    assert [row["sample_idx"] for row in rows] == [13, 14, 15]
    for row in rows:
        ids = tokenizer.apply_chat_template(row["teacher_messages"], add_generation_prompt=True, tokenize=False)
        count = len(tokenizer(ids, add_special_tokens=False)["input_ids"])
        assert row["metadata"]["prompt_tokens"] == count <= 300
        assert row["metadata"]["dropped_for_budget"] > 0
    assert rows[-1]["metadata"]["missing"] == ["feedback"]


# --- the agent's system prompt: flag > params > the checkpoint's system_prompt.txt > default ----------


def test_system_prompt_precedence(checkpoint: Path, tmp_path: Path) -> None:
    output = tmp_path / "prompts.jsonl"
    args = ["--checkpoint-dir", str(checkpoint), "--max-prompt-tokens", "4000", "--output", str(output)]

    def used() -> tuple[str, str]:
        row = rows_of(output)[0]
        assert row["metadata"]["system_prompt"] == row["student_messages"][0]["content"]
        return row["student_messages"][0]["content"], row["metadata"]["system_prompt_source"]

    assert cli(*args) == 0 and used() == ("You are a helpful agent.", "default")
    (checkpoint / "system_prompt.txt").write_text("You are a calculator agent.\n", encoding="utf-8")
    assert cli(*args) == 0 and used() == ("You are a calculator agent.", f"checkpoint:{checkpoint / 'system_prompt.txt'}")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"snapshots": {"system_prompt": "You are a params agent."}}))
    assert cli(*args, "--params", str(params)) == 0 and used() == ("You are a params agent.", "system_prompt")
    assert cli(*args, "--params", str(params), "--system-prompt", "You are a flag agent.") == 0
    assert used() == ("You are a flag agent.", "system_prompt")
    prompt_file = tmp_path / "agent.txt"
    prompt_file.write_text("You are a file agent.", encoding="utf-8")
    assert cli(*args, "--params", str(params), "--system-prompt-file", str(prompt_file)) == 0
    assert used() == ("You are a file agent.", f"file:{prompt_file}")


def test_system_prompt_and_file_both_in_params_is_an_error(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"snapshots": {"checkpoint_dir": str(checkpoint), "system_prompt": "a", "system_prompt_file": "b.txt"}}))
    code = cli("--params", str(params), "--output", str(out / "prompts.jsonl"))
    assert_failed_cleanly(code, capsys, r"system_prompt and system_prompt_file are both set", out)


# --- budget from the teacher; coverage and its WARNING ----------------------------------------------


def test_auto_budget_is_the_teachers_context_minus_max_tokens(checkpoint: Path, tmp_path: Path) -> None:
    output = tmp_path / "prompts.jsonl"
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"snapshots": {"checkpoint_dir": str(checkpoint)}, "generate": {"max_tokens": 100}}))
    assert cli("--params", str(params), "--output", str(output)) == 0
    assert {row["metadata"]["max_prompt_tokens"] for row in rows_of(output)} == {8192 - 100}
    # An unknown teacher needs its context length given.
    assert cli("--params", str(params), "--output", str(output), "--context-length", "300") == 0
    assert {row["metadata"]["max_prompt_tokens"] for row in rows_of(output)} == {200}


def test_auto_budget_without_a_known_context_is_an_error(checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"^max_prompt_tokens: 'auto' needs the teacher's context length"):
        run(config(checkpoint, max_prompt_tokens="auto", tokenizer=None), tmp_path / "prompts.jsonl")
    assert not (tmp_path / "prompts.jsonl").exists()


def test_warning_line_when_samples_lose_more_than_half_their_memory(
    checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    output = tmp_path / "prompts.jsonl"
    summary = run(config(checkpoint, strategy="exclude_current", max_prompt_tokens=400), output, count_tokens=words)
    assert summary.low_coverage == 0 and "WARNING" not in caplog.text
    summary = run(config(checkpoint, strategy="exclude_current", max_prompt_tokens=75), output, count_tokens=words)
    coverages = [row["metadata"]["memory_coverage"] for row in rows_of(output)]
    low = sum(c < 0.5 for c in coverages)
    assert low > 0 and summary.low_coverage == low
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert warnings[0].getMessage().startswith(f"{low} of 4 samples kept less than half of the memory exclude_current wanted")
    assert "max_prompt_tokens 75" in warnings[0].getMessage()


# --- the bundled example with default params --------------------------------------------------------


def test_default_params_on_the_bundled_example(example_checkpoint: Path, repo_root: Path, tmp_path: Path) -> None:
    """exclude_current sees >= 90% of its memory on average; the four strategies differ for >= 90% of samples."""
    section = yaml.safe_load((repo_root / "params.yaml").read_text())["snapshots"]
    prompts: dict[str, dict[int, str]] = {}
    for strategy in ("exclude_current", "full_memory", "rolling_window", "failure_focus"):
        output = tmp_path / f"{strategy}.jsonl"
        # Every sample of the example, not only the max_samples the default run answers.
        run(SnapshotsConfig(**{**section, "checkpoint_dir": str(example_checkpoint), "strategy": strategy, "max_samples": None}), output)
        rows = rows_of(output)
        prompts[strategy] = {row["sample_idx"]: row["teacher_messages"][1]["content"] for row in rows}
        if strategy == "exclude_current":
            coverage = [row["metadata"]["memory_coverage"] for row in rows]
            assert sum(coverage) / len(coverage) >= 0.9
            assert rows[0]["metadata"]["system_prompt_source"].startswith("checkpoint:")
    samples = prompts["exclude_current"].keys()
    assert len(samples) == 16 and all(prompts[name].keys() == samples for name in prompts)
    distinct = sum(len({prompts[name][i] for name in prompts}) == 4 for i in samples)
    assert distinct >= 0.9 * len(samples)


def test_data_none_names_no_file(checkpoint: Path, tmp_path: Path) -> None:
    """params.yaml spells "no file" as data/none (dvc.yaml makes the named files dependencies): read as null."""
    parsed = config(checkpoint, system_prompt=None, observations="data/none", system_prompt_file="./data/none")
    assert parsed.observations is None and parsed.system_prompt_file is None
    assert config(checkpoint, system_prompt="x", system_prompt_file="data/none").system_prompt == "x"  # not "both set"
    run(parsed, tmp_path / "prompts.jsonl")
    assert rows_of(tmp_path / "prompts.jsonl")[0]["metadata"]["observation_source"] == "memory"
