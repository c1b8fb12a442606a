"""The plots drawn offline: the same plots as dvc.yaml declares, SVG that needs no network, in the summary."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
import yaml

from memdistill.plots import PLOTS, render_svg
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
    assert spec.title in svg and "entries kept per token" in svg
    # The data is drawn: a different curve draws a different picture.
    assert render_svg(spec, frame.with_columns(pl.col("mean_kept_per_token") * 2)) != svg


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
