"""Observations from outside the memory, random_sampling views and params metadata, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from memdistill.cli import main as cli_main
from memdistill.core import params
from memdistill.core.errors import UserError
from memdistill.snapshots.checkpoint import load_observations
from stages.snapshots import SnapshotsConfig, run
from tests.conftest import write_jsonl

OBSERVATIONS = [
    {"content": "Problem 101: Zoë has 7 boxes of 6 eggs. How many eggs?"},
    {"type": "Action", "content": "skipped: not an observation"},
    {"type": "Observation", "content": {"task": "Problem 102", "question": "What is 15% of €80?"}},
]


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def observations(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "held_out.jsonl", OBSERVATIONS)


def test_observations_file_is_read_with_line_numbers(observations: Path) -> None:
    found = load_observations(observations, memory_size=10)
    assert [(o.line, o.sample.sample_idx) for o in found] == [(1, 0), (3, 1)]
    assert all(o.sample.start == o.sample.stop == 10 and o.sample.missing == ["action", "feedback"] for o in found)


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ('{"content": "a"}\n{"content": 3}\n', r"held_out\.jsonl:2: 'content' must be a string or an object"),
        ('{"content": "a"}\nnot json\n', r"held_out\.jsonl:2: not valid JSON"),
        ('{"text": "a"}\n', r"held_out\.jsonl:1: entry has no 'content' field"),
        ('{"type": "Action", "content": "a"}\n', r"held_out\.jsonl: no observations"),
    ],
)
def test_bad_observations_name_file_and_line(tmp_path: Path, text: str, pattern: str) -> None:
    (tmp_path / "held_out.jsonl").write_text(text, encoding="utf-8")
    with pytest.raises(UserError, match=pattern):
        load_observations(tmp_path / "held_out.jsonl", 5)


def test_every_strategy_sees_the_whole_memory_for_outside_observations(example_checkpoint: Path, observations: Path, tmp_path: Path) -> None:
    prompts = {}
    for strategy in ("exclude_current", "full_memory"):
        output = tmp_path / f"{strategy}.jsonl"
        run(SnapshotsConfig(checkpoint_dir=str(example_checkpoint), strategy=strategy, observations=str(observations),
                            tokenizer=None, max_prompt_tokens=None), output)
        rows = rows_of(output)
        prompts[strategy] = [row["teacher_messages"] for row in rows]
        assert [row["metadata"]["observation_source"] for row in rows] == [f"observations:{observations}:1", f"observations:{observations}:3"]
        assert all(row["metadata"]["reference_action"] is None and row["metadata"]["failed"] is None for row in rows)
        assert rows[1]["student_messages"][1]["content"] == '{"task":"Problem 102","question":"What is 15% of €80?"}'
    assert prompts["exclude_current"] == prompts["full_memory"]


def test_params_metadata_reaches_every_row_and_may_not_overwrite_ours(example_checkpoint: Path, tmp_path: Path) -> None:
    output = tmp_path / "prompts.jsonl"
    tags = {"run": "exp-12", "split": "train", "agent": {"version": 3}}
    run(SnapshotsConfig(checkpoint_dir=str(example_checkpoint), tokenizer=None, max_prompt_tokens=None, metadata=tags), output)
    assert all({k: row["metadata"][k] for k in tags} == tags for row in rows_of(output))
    # Checked when the parameters are read (params.yaml or --metadata), before anything runs.
    with pytest.raises(UserError, match=r"^snapshots\.metadata: key\(s\) strategy are written by memdistill itself"):
        params.validate(SnapshotsConfig, {"checkpoint_dir": str(example_checkpoint), "metadata": {"strategy": "x"}})


def test_random_sampling_is_byte_identical_for_the_same_seed(example_checkpoint: Path, tmp_path: Path) -> None:
    outputs = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        outputs.append(tmp_path / f"{name}.jsonl")
        run(SnapshotsConfig(checkpoint_dir=str(example_checkpoint), strategy="random_sampling", seed=seed, subset_size=3,
                            num_subsets=2, shuffle=True, tokenizer=None, max_prompt_tokens=None), outputs[-1])
    assert outputs[0].read_bytes() == outputs[1].read_bytes() != outputs[2].read_bytes()
    rows = rows_of(outputs[0])
    assert [(row["sample_idx"], row["metadata"]["observation_idx"], row["metadata"]["view"]) for row in rows[:4]] == [
        (0, 0, 0), (1, 0, 1), (2, 1, 0), (3, 1, 1)
    ]
    assert all(sum(last - first + 1 for first, last in row["metadata"]["memory_samples_kept"] if first >= 0) == 3 for row in rows)


def test_pipeline_with_observations_and_three_views(example_checkpoint: Path, observations: Path, tmp_path: Path) -> None:
    """snapshots -> generate (embedded teacher) -> convert -> stats with an observations file, num_subsets: 3."""
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "snapshots": {"checkpoint_dir": str(example_checkpoint), "strategy": "random_sampling", "subset_size": 2,
                      "metadata": {"split": "held-out"}},
        "generate": {"max_tokens": 4, "batch_size": 6, "cache_dir": str(tmp_path / "cache")},
    }))  # fmt: skip
    prompts, dataset, parquet = tmp_path / "prompts.jsonl", tmp_path / "dataset.jsonl", tmp_path / "dataset.parquet"
    assert cli_main(["snapshots", "--params", str(params), "--output", str(prompts), "--observations", str(observations),
                     "--num-subsets", "3"]) == 0  # fmt: skip
    rows = rows_of(prompts)
    assert [(row["metadata"]["observation_idx"], row["metadata"]["view"], row["metadata"]["views"]) for row in rows] == [
        (i, v, 3) for i in (0, 1) for v in range(3)
    ]
    assert [row["sample_idx"] for row in rows] == list(range(6))
    for i in (0, 1):
        views = {json.dumps(row["metadata"]["memory_samples_kept"]) for row in rows if row["metadata"]["observation_idx"] == i}
        assert len(views) == 3
    assert cli_main(["generate", "--params", str(params), "--input", str(prompts), "--output", str(dataset)]) == 0
    assert cli_main(["convert", "--input", str(dataset), "--output", str(parquet)]) == 0
    assert cli_main(["stats", "--jsonl", str(dataset), "--parquet", str(parquet), "--metrics", str(tmp_path / "stats.json")]) == 0
    records = pd.read_parquet(parquet).to_dict(orient="records")
    assert len(records) == 6
    meta = [json.loads(r["metadata"]) if isinstance(r["metadata"], str) else r["metadata"] for r in records]
    flat = json.dumps(meta, default=str)
    assert "held-out" in flat and f"observations:{observations}:3" in flat
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["samples"] == 6 and stats["coverage_mean"] == 1.0
