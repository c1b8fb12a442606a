"""The plots the stats stage declares in dvc.yaml: `dvc plots show` renders every one of them to HTML.

Runs DVC in a temporary git + DVC repository holding the project's real dvc.yaml and params.yaml and
the plot files the stats stage writes for the hand-made dataset of test_stats.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from memdistill.gain.gain_file import GainRow, GainSummary, GainWriter
from stages.stats import StatsConfig, run
from tests.conftest import REPO_ROOT
from tests.test_stats import MIN_PROB_MASS, write_dataset

PLOT_FILES = ["plots/kept_per_token.csv", "plots/mass_curve.csv", "plots/memory_gain.csv", "plots/tokens_per_sample.csv", "plots/memory_vs_output.csv", "plots/memory_coverage.csv"]


def _run(cmd: list[str], cwd: Path) -> str:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _plot_files(definition: dict) -> set[str]:
    """Files one top-level plot definition reads (its y, and x when x names files)."""
    files: set[str] = set()
    for axis in ("x", "y"):
        value = definition.get(axis)
        if isinstance(value, dict):
            files.update(value)
    return files


def test_declared_plots_read_only_files_the_stats_stage_writes() -> None:
    dvc = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
    stage = dvc["stages"]["stats"]
    outs = {next(iter(item)) if isinstance(item, dict) else item for item in stage["outs"]}
    assert set(PLOT_FILES) <= outs and "reports/summary.md" in outs
    read = set().union(*(_plot_files(next(iter(entry.values()))) for entry in dvc["plots"]))
    assert read == set(PLOT_FILES)
    assert {"convert.min_prob_mass", "stats"} <= set(stage["params"])


@pytest.fixture(scope="module")
def plots_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("plots_repo")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy2(REPO_ROOT / name, repo / name)
    data = tmp_path_factory.mktemp("plots_data")
    jsonl, parquet = write_dataset(data)
    gain = data / "gain.parquet"
    writer = GainWriter(gain)
    for key, value in enumerate((0.05, 1.5)):
        writer.write(GainRow(key, "measured", value, 0.5, 3, 0, [1, 2, 3], [value] * 3, [-1.0] * 3))
    writer.close(GainSummary())
    run(jsonl, parquet, repo / "metrics" / "stats.json", repo / "plots", repo / "reports" / "summary.md", StatsConfig(min_prob_mass=MIN_PROB_MASS),
        gain=gain)
    _run(["git", "init", "-q"], repo)
    _run([sys.executable, "-m", "dvc", "init", "-q"], repo)
    return repo


def test_dvc_plots_show_renders_every_declared_plot(plots_repo: Path) -> None:
    shown = json.loads(_run([sys.executable, "-m", "dvc", "plots", "show", "--json"], plots_repo))
    assert not shown.get("errors")
    names = {entry_name for entry in yaml.safe_load((plots_repo / "dvc.yaml").read_text())["plots"] for entry_name in entry}
    assert set(shown["data"]) == names
    for name, renders in shown["data"].items():
        assert renders and all(render["type"] == "vega" for render in renders), name
    _run([sys.executable, "-m", "dvc", "plots", "show", "-o", "rendered"], plots_repo)
    html = (plots_repo / "rendered" / "index.html").read_text()
    assert html.count("vegaEmbed") >= len(names)
    # The data itself reaches the page: the mass curve's thresholds and the histogram's bars.
    assert '"threshold": "0.999"' in html
    assert '"mean_kept_per_token"' in html


def test_dvc_metrics_show_reads_stats_json(plots_repo: Path) -> None:
    shown = _run([sys.executable, "-m", "dvc", "metrics", "show", "--json"], plots_repo)
    metrics = json.loads(shown)
    values = next(iter(metrics.values()))["data"]["metrics/stats.json"]["data"]
    assert values["kept_entries"] == 14 and values["assistant_tokens"]["total"] == 6
