"""SIGKILL each stage at random moments: outputs are never partial and a re-run completes them exactly."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.data import write_dataset, write_snapshot
from tests.reliability.harness import crash_rounds, run_cli

ROUNDS = 20


def test_snapshots_stage_survives_sigkill(tmp_path: Path) -> None:
    write_snapshot(tmp_path / "ep_000001", samples=500)  # a run of a few seconds: 20 kills and re-runs stay ~2 min
    output = tmp_path / "prompts.jsonl"
    args = ["snapshots", "--checkpoint-dir", str(tmp_path / "ep_000001"), "--strategy", "rolling_window",
            "--window-k", "60", "--output", str(output)]
    report = crash_rounds(args, tmp_path, [output], ROUNDS, seed=1)
    print(f"snapshots: {report}")
    assert report.killed_with_output_present + report.killed_before_output >= ROUNDS // 2, report


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("dataset")
    return write_dataset(folder / "dataset.jsonl", rows=120, tokens=30)


def test_convert_stage_survives_sigkill(tmp_path: Path, dataset: Path) -> None:
    output = tmp_path / "dataset.parquet"
    args = ["convert", "--input", str(dataset), "--output", str(output), "--min-prob-mass", "0.9"]
    report = crash_rounds(args, tmp_path, [output], ROUNDS, seed=2)
    print(f"convert: {report}")
    assert report.killed_with_output_present + report.killed_before_output >= ROUNDS // 2, report


def test_stats_stage_survives_sigkill(tmp_path: Path, dataset: Path) -> None:
    parquet = tmp_path / "dataset.parquet"
    assert run_cli(["convert", "--input", str(dataset), "--output", str(parquet)], tmp_path).returncode == 0
    metrics = tmp_path / "stats.json"
    args = ["stats", "--jsonl", str(dataset), "--parquet", str(parquet), "--metrics", str(metrics),
            "--plots-dir", str(tmp_path / "plots")]
    outputs = [metrics, tmp_path / "plots" / "kept_per_token.csv"]
    report = crash_rounds(args, tmp_path, outputs, ROUNDS, seed=3)
    print(f"stats: {report}")
    assert report.killed_with_output_present + report.killed_before_output >= ROUNDS // 2, report
