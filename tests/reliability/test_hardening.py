"""Issue 13: pathological inputs, concurrent runs, readable outputs and foot-guns, each through the real CLI."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.reliability.data import write_dataset, write_snapshot
from tests.reliability.harness import CLI, cli_env, run_cli
from tests.reliability.test_environment_faults import assert_one_clean_error

EMAIL = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"


def snapshot_of(folder: Path, entries: list[dict], name: str = "memory_1.jsonl") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("".join(json.dumps(e) + "\n" for e in entries), encoding="utf-8")
    return path


def snapshots(folder: Path, output: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli(["snapshots", "--checkpoint-dir", str(folder), "--output", str(output), *extra], output.parent)


# -------------------------------------------------------------------------------- pathological input


def test_two_megabyte_unbroken_word_is_redacted_in_one_pass(tmp_path: Path) -> None:
    """A 200 KB word took Python's re 60 s (quadratic); 2 MB would take over an hour. RE2 is linear."""
    word = "a" * 2_000_000
    folder = tmp_path / "ep"
    snapshot_of(folder, [{"type": "Observation", "content": word + "@example.com and " + word}, {"type": "Action", "content": "x"}])
    output = tmp_path / "prompts.jsonl"
    # No token budget: under the default (auto, the teacher's 8k context) this 4 MB prompt is rightly left out.
    result = snapshots(folder, output, "--redact-patterns", EMAIL, "--max-prompt-tokens", "null", "--tokenizer", "null")
    assert result.returncode == 0, result.stderr
    row = json.loads(output.read_text(encoding="utf-8"))
    assert row["student_messages"][1]["content"] == "[REDACTED] and " + word
    assert row["metadata"]["redactions"]["observation"] == 1


def test_json_nested_5000_levels_is_one_clean_line(tmp_path: Path) -> None:
    folder = tmp_path / "ep"
    folder.mkdir()
    deep = '{"type": "Observation", "content": {"a": ' + "[" * 5000 + "]" * 5000 + "}}\n"
    (folder / "memory_1.jsonl").write_text('{"type": "Observation", "content": "q"}\n' + deep, encoding="utf-8")
    line = assert_one_clean_error(snapshots(folder, tmp_path / "prompts.jsonl"), "snapshots")
    assert "memory_1.jsonl:2: JSON nested too deeply" in line


def test_user_pattern_outside_re2_is_refused(tmp_path: Path) -> None:
    write_snapshot(tmp_path / "ep", samples=2)
    line = assert_one_clean_error(snapshots(tmp_path / "ep", tmp_path / "p.jsonl", "--redact-patterns", r"(\w+)\1"), "snapshots")
    assert r"--redact-patterns: '(\w+)\1' is not a valid regular expression for the linear-time engine RE2" in line


# ---------------------------------------------------------------------------------------- concurrency


def test_four_runs_writing_the_same_output_take_turns(tmp_path: Path) -> None:
    write_snapshot(tmp_path / "ep", samples=400)
    output = tmp_path / "same.jsonl"
    args = ["snapshots", "--checkpoint-dir", str(tmp_path / "ep"), "--strategy", "rolling_window", "--output", str(output)]
    processes = [subprocess.Popen([*CLI, *args], cwd=tmp_path, env=cli_env(), stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [(p.wait(timeout=600), p.stderr.read() if p.stderr else "") for p in processes]
    assert [code for code, _ in results] == [0, 0, 0, 0], results
    reference = tmp_path / "reference.jsonl"
    assert snapshots(tmp_path / "ep", reference, "--strategy", "rolling_window").returncode == 0
    assert output.read_bytes() == reference.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ep", "reference.jsonl", "same.jsonl"]  # no temporaries


def test_four_converts_of_the_same_parquet_take_turns(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "dataset.jsonl", rows=40, tokens=10)
    output = tmp_path / "same.parquet"
    args = ["convert", "--input", str(dataset), "--output", str(output)]
    processes = [subprocess.Popen([*CLI, *args], cwd=tmp_path, env=cli_env(), stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [(p.wait(timeout=600), p.stderr.read() if p.stderr else "") for p in processes]
    assert [code for code, _ in results] == [0, 0, 0, 0], results
    assert not any("No such file" in err for _, err in results)
    # no temporaries; the validation split (convert.validation_fraction) beside the parquet
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset.jsonl", "same.figures.json", "same.parquet", "same.validation.parquet"]


# ---------------------------------------------------------------------------------- files users can read


def test_outputs_are_readable_as_the_umask_says(tmp_path: Path) -> None:
    write_snapshot(tmp_path / "ep", samples=3)
    output = tmp_path / "prompts.jsonl"
    result = subprocess.run(
        ["sh", "-c", 'umask 022 && exec "$@"', "sh", *CLI, "snapshots", "--checkpoint-dir", str(tmp_path / "ep"), "--output", str(output)],
        cwd=tmp_path, env=cli_env(), capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(output.stat().st_mode) == 0o644


# ------------------------------------------------------------------------------------------ foot-guns


def test_output_over_the_input_is_refused(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "dataset.jsonl", rows=2, tokens=3)
    before = dataset.read_bytes()
    line = assert_one_clean_error(run_cli(["convert", "--input", str(dataset), "--output", str(dataset)], tmp_path), "convert")
    assert "this output is also an input" in line
    line = assert_one_clean_error(run_cli(["generate", "--input", str(dataset), "--output", str(dataset)], tmp_path), "generate")
    assert "this output is also an input" in line
    assert dataset.read_bytes() == before


def test_output_over_a_snapshot_is_refused(tmp_path: Path) -> None:
    snapshot = write_snapshot(tmp_path / "ep", samples=2)
    before = snapshot.read_bytes()
    line = assert_one_clean_error(snapshots(tmp_path / "ep", snapshot), "snapshots")
    assert "this output is also an input" in line
    line = assert_one_clean_error(snapshots(tmp_path / "ep", tmp_path / "ep" / "memory_999999.jsonl"), "snapshots")
    assert "would become the checkpoint's newest snapshot" in line
    assert snapshot.read_bytes() == before and sorted(p.name for p in (tmp_path / "ep").iterdir()) == ["memory_000001.jsonl"]


def test_snapshot_path_outside_the_checkpoint_is_refused_not_swapped(tmp_path: Path) -> None:
    write_snapshot(tmp_path / "ep", samples=2)
    elsewhere = write_snapshot(tmp_path / "other", samples=5)  # same file name, different content
    line = assert_one_clean_error(snapshots(tmp_path / "ep", tmp_path / "p.jsonl", "--snapshot", str(elsewhere)), "snapshots")
    assert "snapshot must be a file name inside checkpoint_dir" in line
    inside = tmp_path / "ep" / "memory_000001.jsonl"
    assert snapshots(tmp_path / "ep", tmp_path / "p.jsonl", "--snapshot", str(inside)).returncode == 0


def test_same_id_with_two_paddings_is_an_error_naming_both(tmp_path: Path) -> None:
    folder = tmp_path / "ep"
    snapshot_of(folder, [{"type": "Observation", "content": "a"}], "memory_100.jsonl")
    snapshot_of(folder, [{"type": "Observation", "content": "b"}], "memory_0100.jsonl")
    line = assert_one_clean_error(snapshots(folder, tmp_path / "p.jsonl"), "snapshots")
    assert "memory_0100.jsonl and memory_100.jsonl have the same id 100" in line


def test_broken_symlink_as_newest_snapshot_is_an_error(tmp_path: Path) -> None:
    folder = tmp_path / "ep"
    snapshot_of(folder, [{"type": "Observation", "content": "a"}], "memory_1.jsonl")
    (folder / "memory_2.jsonl").symlink_to(tmp_path / "gone.jsonl")
    line = assert_one_clean_error(snapshots(folder, tmp_path / "p.jsonl"), "snapshots")
    assert "memory_2.jsonl: broken symlink" in line
    assert snapshots(folder, tmp_path / "p.jsonl", "--snapshot", "memory_1.jsonl").returncode == 0


def test_empty_observation_is_a_warning(tmp_path: Path) -> None:
    folder = tmp_path / "ep"
    snapshot_of(folder, [{"type": "Observation", "content": "  "}, {"type": "Action", "content": "x"}])
    result = snapshots(folder, tmp_path / "p.jsonl")
    assert result.returncode == 0, result.stderr
    assert "memory_1.jsonl:1: Observation with empty content" in result.stderr


def test_empty_failure_pattern_is_rejected(tmp_path: Path) -> None:
    write_snapshot(tmp_path / "ep", samples=2)
    params = tmp_path / "params.yaml"
    params.write_text("snapshots:\n  failure_patterns: ['']\n")
    line = assert_one_clean_error(snapshots(tmp_path / "ep", tmp_path / "p.jsonl", "--params", str(params)), "snapshots")
    assert line.endswith("snapshots.failure_patterns: '' matches the empty string")


def test_unknown_tokenizer_fails_without_hub_retries(tmp_path: Path) -> None:
    write_snapshot(tmp_path / "ep", samples=2)
    env = cli_env({"HF_ENDPOINT": "http://127.0.0.1:9"})  # nothing listens on the discard port
    result = run_cli(["snapshots", "--checkpoint-dir", str(tmp_path / "ep"), "--output", str(tmp_path / "p.jsonl"),
                      "--max-prompt-tokens", "100", "--tokenizer", "no-such"], tmp_path, env)  # fmt: skip
    line = assert_one_clean_error(result, "snapshots")
    assert "cannot load tokenizer 'no-such': not a local folder, not in the Hugging Face cache" in line
    assert "Retrying" not in result.stderr


def test_stats_on_nan_names_the_file_and_line(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "dataset.jsonl", rows=3, tokens=3)
    parquet = tmp_path / "dataset.parquet"
    assert run_cli(["convert", "--input", str(dataset), "--output", str(parquet)], tmp_path).returncode == 0
    lines = dataset.read_text().splitlines()
    lines[1] = lines[1].replace('"logprob": ', '"logprob": NaN, "was": ', 1)
    dataset.write_text("\n".join(lines) + "\n")
    result = run_cli(["stats", "--jsonl", str(dataset), "--parquet", str(parquet), "--metrics", str(tmp_path / "m.json")], tmp_path)
    line = assert_one_clean_error(result, "stats")
    assert line.endswith("dataset.jsonl:2: NaN is not valid JSON (write null or a finite number)")


def test_inspect_latin1_and_prompts_files(tmp_path: Path) -> None:
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes('{"messages": []}\n{"messages": [], "note": "café"}\n'.encode("latin-1"))
    for extra in ([], ["--summary"]):
        line = assert_one_clean_error(run_cli(["inspect", str(latin), "--sample", "1", *extra], tmp_path), "inspect")
        assert "latin.jsonl:2: not UTF-8 text" in line
    write_snapshot(tmp_path / "ep", samples=2)
    assert snapshots(tmp_path / "ep", tmp_path / "prompts.jsonl").returncode == 0
    line = assert_one_clean_error(run_cli(["inspect", str(tmp_path / "prompts.jsonl"), "--summary"], tmp_path), "inspect")
    assert "prompts.jsonl:1: a prompts file from the snapshots stage" in line


@pytest.mark.parametrize(
    ("text", "stage", "expected"),
    [
        ("generate:\n  max_tokens: abc\n", "generate", 'generate.max_tokens: expected an integer >= 1, got "abc"'),
        ("generate:\n  metrics: 5\n", "generate", "generate.metrics: expected a string or null, got 5"),
        ("convert:\n  model: 5\n", "convert", "convert.model: expected a string or null, got 5"),
    ],
)
def test_bad_params_end_in_one_line_before_any_work(text: str, stage: str, expected: str, tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(text)
    dataset = write_dataset(tmp_path / "dataset.jsonl", rows=2, tokens=3)
    output = tmp_path / "out"
    result = run_cli([stage, "--params", str(params), "--input", str(dataset), "--output", str(output)], tmp_path)
    assert assert_one_clean_error(result, stage).endswith(f"{params}: {expected}")
    assert sorted(os.listdir(tmp_path)) == ["dataset.jsonl", "params.yaml"]
