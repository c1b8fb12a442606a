"""The stats stage's plots drawn offline: one SVG per plot of `dvc.yaml`, embedded in reports/summary.md.

`dvc plots show` writes HTML that loads its chart library from the internet (blank offline); these SVG
files need nothing but a viewer, show on GitHub, and diff as text. `PLOTS` mirrors the top-level `plots:`
of `dvc.yaml` (a test keeps the two equal), so both views draw the same data the same way.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from memdistill import fileio


@dataclass(frozen=True, slots=True)
class PlotSpec:
    name: str  # the plot's id in dvc.yaml, and its SVG file's stem
    data: str  # the plot table it draws (plots/<data>.csv)
    title: str
    template: str  # DVC's template: linear | scatter | bar_horizontal
    x: str
    y: str
    x_label: str
    y_label: str


PLOTS: tuple[PlotSpec, ...] = (
    PlotSpec("kept_per_token", "kept_per_token", "Entries kept per assistant token (histogram)", "bar_horizontal",
             "tokens", "kept", "assistant tokens", "entries kept"),
    PlotSpec("mass_curve_entries", "mass_curve", "Mass curve - entries kept per token at each min_prob_mass", "linear",
             "threshold", "mean_kept_per_token", "min_prob_mass", "entries kept per token"),
    PlotSpec("mass_curve_size", "mass_curve", "Mass curve - projected parquet size at each min_prob_mass", "linear",
             "threshold", "projected_parquet_mb", "min_prob_mass", "projected parquet MB"),
    PlotSpec("tokens_per_sample", "tokens_per_sample", "Assistant tokens per sample", "scatter",
             "sample", "tokens", "sample index", "assistant tokens"),
    PlotSpec("memory_vs_output", "memory_vs_output", "Memory size vs output length", "scatter",
             "memory_size_chars", "tokens", "memory the teacher saw (chars)", "assistant tokens"),
    PlotSpec("memory_coverage", "memory_coverage", "Memory coverage per sample (kept / wanted memory tokens)",
             "bar_horizontal", "coverage", "sample", "share of the wanted memory the teacher saw", "sample index"),
)  # fmt: skip

COLOR = "#4c78a8"  # Vega-Lite's first colour, as `dvc plots show` draws


def render_svg(spec: PlotSpec, frame: pl.DataFrame) -> str:
    """One plot as SVG text; identical data gives identical bytes (no dates, fixed ids, text as text)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    with matplotlib.rc_context({"svg.hashsalt": "memdistill", "svg.fonttype": "none", "font.size": 9}):
        figure = Figure(figsize=(6.4, 3.6))
        figure.subplots_adjust(left=0.1, right=0.97, top=0.9, bottom=0.14)  # fixed: a layout engine costs more than the drawing
        axes = figure.add_subplot()
        data = frame.drop_nulls([spec.x, spec.y])
        x, y = data[spec.x].to_list(), data[spec.y].to_list()
        if spec.template == "bar_horizontal":
            axes.barh(y, x, color=COLOR, height=0.8)
            axes.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts of entries: no 2.5
        elif spec.template == "linear":
            axes.plot(x, y, color=COLOR, marker="o", markersize=3)
        else:
            axes.scatter(x, y, color=COLOR, s=10, alpha=0.7)
        axes.set(title=spec.title, xlabel=spec.x_label, ylabel=spec.y_label)
        axes.grid(alpha=0.3)
        if not x:
            axes.text(0.5, 0.5, "no data", transform=axes.transAxes, ha="center", va="center", color="grey")
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    return buffer.getvalue()


def render_plots(tables: Mapping[str, pl.DataFrame]) -> dict[str, str]:
    """SVG text per plot name, for the plot tables stats computed."""
    return {spec.name: render_svg(spec, tables[spec.data]) for spec in PLOTS}


def write_plots(folder: Path, svgs: Mapping[str, str]) -> list[Path]:
    """Write `<folder>/<name>.svg` for each plot (atomically, each); returns the paths in PLOTS order."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, svg in svgs.items():
        path = folder / f"{name}.svg"
        with fileio.atomic_output(path) as handle:
            handle.write(svg)
        paths.append(path)
    return paths
