"""The plots drawn offline: the same plots as dvc.yaml declares, SVG that needs no network, in the summary."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import polars as pl
import pytest
import yaml

from memdistill.stats.plots import MAX_POINTS, PLOTS, PlotSpec, render_plots, render_svg
from stages.stats import StatsConfig, run
from tests.conftest import REPO_ROOT
from tests.test_stats import MIN_PROB_MASS, write_dataset


def test_offline_plots_mirror_dvc_yaml() -> None:
    declared = {}
    for entry in yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["plots"]:
        ((name, spec),) = entry.items()
        x, y = spec["x"], spec["y"]
        files = {*y, *(x if isinstance(x, dict) else {})}
        declared[name] = (
            {Path(f).stem for f in files}, spec["title"], spec["template"],
            x if isinstance(x, str) else next(iter(x.values())), next(iter(y.values())), spec["x_label"], spec["y_label"],
        )  # fmt: skip
    drawn = {p.name: ({p.data}, p.title, p.template, p.x, p.y, p.x_label, p.y_label) for p in PLOTS}
    assert drawn == declared
    outs = {next(iter(o)) if isinstance(o, dict) else o for o in yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]["stats"]["outs"]}
    assert {f"plots/{p.name}.svg" for p in PLOTS} <= outs


def test_svg_is_self_contained_and_repeatable() -> None:
    spec = next(p for p in PLOTS if p.name == "mass_curve_entries")
    frame = pl.DataFrame({"threshold": [0.5, 0.9, 0.99], "mean_kept_per_token": [1.2, 2.5, 4.75]})
    svg = render_svg(spec, frame)
    assert svg == render_svg(spec, frame)
    assert svg.lstrip().startswith("<?xml") and "</svg>" in svg
    # Nothing to fetch: no scripts, no links or fonts from elsewhere (namespaces are names, not requests).
    assert "<script" not in svg and not re.search(r'(href|src)="https?:', svg) and "@import" not in svg
    assert "<!--" not in svg  # pygal's comment carries the date it was drawn on
    assert spec.title in svg and "entries kept per token" in svg
    # The data is drawn: a different curve draws a different picture.
    assert render_svg(spec, frame.with_columns(pl.col("mean_kept_per_token") * 2)) != svg


# One small table per plot data name, the columns stats writes.
TABLES = {
    "kept_per_token": pl.DataFrame({"kept": [1, 2, 4], "tokens": [2, 1, 1]}),
    "mass_curve": pl.DataFrame({"threshold": [0.5, 0.9], "mean_kept_per_token": [1.25, 3.5], "projected_parquet_mb": [0.02, 0.05]}),
    "tokens_per_sample": pl.DataFrame({"sample": [0, 1, 2], "tokens": [44, 46, 45]}),
    "memory_vs_output": pl.DataFrame({"sample": [0, 1], "memory_size_chars": [5700, 5900], "tokens": [44, 46]}),
    "memory_coverage": pl.DataFrame({"sample": [0, 1], "coverage": [1.0, 0.75]}),
    "memory_gain": pl.DataFrame({"gain": [0.0, 0.5, 1.0], "samples": [1, 3, 2]}),
}


def test_svgs_are_the_same_in_another_process() -> None:
    """Nothing random (pygal's uuid4 chart id) or hash-ordered leaks into the bytes."""
    code = "import sys; from memdistill.stats.plots import render_plots; from tests.test_plots import TABLES; sys.stdout.write(repr(render_plots(TABLES)))"
    env = dict(os.environ, PYTHONHASHSEED="12345")
    other = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True).stdout
    assert other == repr(render_plots(TABLES))


def _axis_labels(svg: str, axis: str | None = None) -> list[str]:
    """The tick labels of every axis, or of pygal's `x` or `y` axis (x is the horizontal one, also for bars)."""
    root = ElementTree.fromstring(svg.encode())
    axes = (g for g in root.iter("{http://www.w3.org/2000/svg}g")
            if "axis" in g.get("class", "").split() and (axis is None or axis in g.get("class", "").split()))
    return [text.text for axis in axes for text in axis.iter("{http://www.w3.org/2000/svg}text") if text.text]


@pytest.mark.parametrize("name", ["kept_per_token", "tokens_per_sample", "memory_vs_output"])
def test_counts_get_integer_ticks(name: str) -> None:
    spec = next(p for p in PLOTS if p.name == name)
    labels = _axis_labels(render_svg(spec, TABLES[spec.data]))
    assert labels and all(re.fullmatch(r"\d+", label) for label in labels), labels


def test_fractions_keep_fractional_ticks() -> None:
    spec = next(p for p in PLOTS if p.name == "mass_curve_entries")
    assert any("." in label for label in _axis_labels(render_svg(spec, TABLES[spec.data])))


@pytest.mark.parametrize("name", ["memory_coverage", "mass_curve_entries"])
def test_share_axes_run_from_0_to_1(name: str) -> None:
    spec = next(p for p in PLOTS if p.name == name)
    frame = TABLES[spec.data].with_columns(pl.col(spec.x) * 0.065)  # all far below 1
    # Both draw the share horizontally: the coverage bars' length, the mass curve's min_prob_mass.
    values = [float(label) for label in _axis_labels(render_svg(spec, frame), "x")]
    assert min(values) == 0 and max(values) == 1, values


@pytest.mark.parametrize("spec", PLOTS, ids=lambda p: p.name)
def test_empty_table_draws_no_data(spec: PlotSpec) -> None:
    svg = render_svg(spec, TABLES[spec.data].clear())
    assert ">no data<" in svg and spec.title in svg


def test_long_tables_are_thinned_for_the_drawing() -> None:
    spec = next(p for p in PLOTS if p.name == "tokens_per_sample")
    rows = 100_000
    svg = render_svg(spec, pl.DataFrame({"sample": range(rows), "tokens": [i % 997 for i in range(rows)]}))
    assert 0 < svg.count("<circle") <= MAX_POINTS
    assert "1 row in 100 of 100,000 drawn" in svg
    assert len(svg) < 200_000
    # Up to MAX_POINTS rows, every row is drawn.
    svg = render_svg(spec, pl.DataFrame({"sample": range(MAX_POINTS), "tokens": range(MAX_POINTS)}))
    assert svg.count("<circle") == MAX_POINTS and "drawn)" not in svg


def test_stage_writes_svgs_and_embeds_them_in_the_summary(tmp_path: Path) -> None:
    jsonl, parquet = write_dataset(tmp_path)
    plots, summary = tmp_path / "plots", tmp_path / "reports" / "summary.md"
    run(jsonl, parquet, tmp_path / "metrics" / "stats.json", plots, summary, StatsConfig(min_prob_mass=MIN_PROB_MASS))
    for spec in PLOTS:
        assert (plots / f"{spec.name}.svg").read_text().rstrip().endswith("</svg>")
    text = summary.read_text()
    embedded = re.findall(r"!\[([^]]+)\]\(([^)]+)\)", text)
    assert embedded == [(spec.title, f"../plots/{spec.name}.svg") for spec in PLOTS]
    assert all((summary.parent / path).is_file() for _, path in embedded)


def test_summary_without_plots_embeds_nothing(tmp_path: Path) -> None:
    jsonl, parquet = write_dataset(tmp_path)
    summary = tmp_path / "summary.md"
    run(jsonl, parquet, tmp_path / "stats.json", None, summary, StatsConfig(min_prob_mass=MIN_PROB_MASS))
    assert "![" not in summary.read_text()
