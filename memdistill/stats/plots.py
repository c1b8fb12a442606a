"""The stats stage's plots drawn offline: one SVG per plot of `dvc.yaml`, embedded in reports/summary.md.

`dvc plots show` writes HTML that loads its chart library from the internet (blank offline); these SVG
files need nothing but a viewer, show on GitHub, and diff as text. `PLOTS` mirrors the top-level `plots:`
of `dvc.yaml` (a test keeps the two equal), so both views draw the same data the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

import polars as pl

from memdistill.core import fileio


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
    PlotSpec("memory_gain", "memory_gain", "Memory gain per sample (histogram; docs/gain.md)", "bar_horizontal",
             "samples", "gain", "samples", "memory gain, bin start (nats/token)"),
    PlotSpec("tokens_per_sample", "tokens_per_sample", "Assistant tokens per sample", "scatter",
             "sample", "tokens", "sample index", "assistant tokens"),
    PlotSpec("memory_vs_output", "memory_vs_output", "Memory size vs output length", "scatter",
             "memory_size_chars", "tokens", "memory the teacher saw (chars)", "assistant tokens"),
    PlotSpec("memory_coverage", "memory_coverage", "Memory coverage per sample (kept / wanted memory tokens)",
             "bar_horizontal", "coverage", "sample", "share of the wanted memory the teacher saw", "sample index"),
)  # fmt: skip

# Plot columns that are shares (of the wanted memory, of probability mass): their axis always runs from 0 to 1,
# so 6% coverage looks like 6% and not like a full bar on an axis that ends at 0.065.
SHARE_COLUMNS = frozenset({"coverage", "threshold"})
COLOR = "#4c78a8"  # Vega-Lite's first colour, as `dvc plots show` draws
# Points drawn per plot: a per-sample table can have a million rows, and every point drawn is ~0.07 ms and
# ~120 bytes of SVG. Longer tables are thinned to every n-th row for the drawing only (the CSV keeps all).
MAX_POINTS = 1000


def render_svg(spec: PlotSpec, frame: pl.DataFrame) -> str:
    """One plot as SVG text; identical data gives identical bytes (no dates, no random ids, no scripts)."""
    import pygal
    from pygal.style import Style

    data = frame.drop_nulls([spec.x, spec.y])
    title = spec.title
    step = -(-data.height // MAX_POINTS)
    if step > 1:
        title += f" (1 row in {step} of {data.height:,} drawn)"
        data = data.gather_every(step)
    bars = spec.template == "bar_horizontal"
    drawn = [spec.x] if bars else [spec.x, spec.y]  # a bar chart's y is its categories
    config = pygal.Config(
        title=title, x_title=spec.x_label, y_title=spec.y_label, width=640, height=360, explicit_size=True,
        style=Style(colors=(COLOR,), background="white", plot_background="white", font_family="sans-serif",
                    guide_stroke_color="#ccc", major_guide_stroke_color="#ccc"),
        show_legend=False, no_data_text="no data",
        order_min=0 if all(data.schema[c].is_integer() for c in drawn) else None,  # counts: no tick at 2.5
        js=[],  # no script to load
    )  # fmt: skip
    if spec.x in SHARE_COLUMNS:
        if bars:
            config.range = (0, 1)  # a bar chart's values are its x
        else:
            config.xrange = (0, 1)
    if not bars and spec.y in SHARE_COLUMNS:
        config.range = (0, 1)
    if bars:
        # pygal calls the categories x labels and draws them on the y axis: at most 20 of them are written.
        chart = pygal.HorizontalBar(config, x_labels=[str(v) for v in data[spec.y]], x_labels_major_count=20, show_minor_y_labels=False)
        chart.add(spec.x_label, data[spec.x].to_list())
    else:
        chart = pygal.XY(config, stroke=spec.template == "linear")
        chart.add(spec.y_label, list(zip(data[spec.x].to_list(), data[spec.y].to_list(), strict=True)))
    # pygal's id (a random uuid4) prefixes every CSS rule; `no_prefix` would leave rules with no selector.
    chart.uuid = spec.name
    chart.add_xml_filter(_static)
    return chart.render(is_unicode=True)


def _static(root: ElementTree.Element) -> ElementTree.Element:
    """Drop what pygal adds for its JavaScript tooltips (a <script>, <desc> values) and its dated comments."""
    for parent in list(root.iter()):
        for child in list(parent):
            if not isinstance(child.tag, str) or child.tag.rpartition("}")[2] in ("script", "desc"):
                parent.remove(child)
    ElementTree.indent(root, space="")  # one element per line: the git-tracked files diff line by line
    return root


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
