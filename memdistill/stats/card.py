"""The dataset card: `data/README.md` in the Hugging Face dataset-card convention, written by the stats stage.

YAML front matter first (what the Hub and `datasets.load_dataset` read): `configs` naming the train and
validation files relative to the card's folder (a glob over the parts of a shard directory), the features
(from the parquet's own schema, so every column a stage adds is listed), the size category and tags. Below
it, for people: the figures, the plots, how the data was made (from the rows' lineage and the parquet
footer: strategy, teacher, budget, coverage, memory gain where measured, the git revision) and how to load
it with cartridges and with `datasets`.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from memdistill import __version__
from memdistill.core import shards
from memdistill.core.lineage import read_file_lineage

TAGS = ("memdistill", "cartridges", "context-distillation", "synthetic", "logprobs")
# The Hub's size categories: (upper bound, label).
SIZE_CATEGORIES = (
    (1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"),
)


# pyarrow's names where `datasets` names a type otherwise.
ARROW_NAMES = {"float": "float32", "double": "float64", "halffloat": "float16", "large_string": "string"}


def size_category(rows: int) -> str:
    return next((label for bound, label in SIZE_CATEGORIES if rows < bound), "n>1B")


def feature(name: str, kind: pa.DataType) -> dict[str, Any]:
    """One field in the card's `dataset_info.features` notation (what `datasets` writes for the same schema)."""
    return {"name": name, **_feature_type(kind)}


def _feature_type(kind: pa.DataType) -> dict[str, Any]:
    if pa.types.is_struct(kind):
        return {"struct": [feature(child.name, child.type) for child in kind]}
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        inner = _feature_type(kind.value_type)
        if "dtype" in inner:
            return {"list": inner["dtype"]}
        return {"list": inner["struct"] if "struct" in inner else inner}
    return {"dtype": ARROW_NAMES.get(str(kind), str(kind))}


def git_revision(folder: Path) -> str:
    """`git rev-parse HEAD` of the repository holding `folder`, or "unknown" (no git, not a repository)."""
    try:
        found = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    revision = found.stdout.strip()
    return revision if found.returncode == 0 and revision else "unknown"


def rows_in(path: Path) -> int:
    return sum(pq.ParquetFile(part).metadata.num_rows for part in shards.part_files(path))


def _data_files(path: Path, folder: Path) -> str:
    relative = Path(os.path.relpath(path, folder)).as_posix()
    return f"{relative}/*.parquet" if path.is_dir() else relative


def front_matter(train: Path, validation: Path | None, folder: Path) -> dict[str, Any]:
    """The YAML header: configs, features, size category, tags. An empty validation split is left out
    (a split of nothing is no evaluation, and the Hub shows it as an error)."""
    splits = [("train", train)] + ([("validation", validation)] if validation is not None and rows_in(validation) else [])
    schema = pq.read_schema(shards.part_files(train)[0])
    return {
        "configs": [{"config_name": "default", "data_files": [{"split": name, "path": _data_files(path, folder)} for name, path in splits]}],
        "dataset_info": {"features": [feature(field.name, field.type) for field in schema]},
        "size_categories": [size_category(sum(rows_in(path) for _, path in splits))],
        "tags": list(TAGS),
        "task_categories": ["text-generation"],
    }


def _first_row(train: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The first row's lineage and recorded metadata (`inspect --summary` lists every distinct lineage)."""
    first = pq.ParquetFile(shards.part_files(train)[0])
    if first.metadata.num_rows == 0:
        return {}, {}
    value = first.read_row_group(0, columns=["metadata"]).column("metadata")[0].as_py() or {}
    try:
        recorded = json.loads(value.get("json") or "{}")
    except json.JSONDecodeError:
        recorded = {}
    return value.get("lineage") or {}, recorded if isinstance(recorded, dict) else {}


def _figure(value: Any, fallback: str = "not recorded") -> str:
    return fallback if value is None else str(value)


def how_made(train: Path, metrics: dict[str, Any], revision: str) -> list[str]:
    """The "how it was made" section: strategy, teacher, budget, coverage, memory gain, versions."""
    row, recorded = _first_row(train)
    footer = read_file_lineage(train) or {}
    stages = footer.get("params") or {}
    snapshots, generate, convert = (stages.get(name) or {} for name in ("snapshots", "generate", "convert"))
    # Without the params file's sections (convert run without --params), what the row itself recorded.
    generate = generate or (recorded.get("teacher") if isinstance(recorded.get("teacher"), dict) else {})
    snapshots = snapshots or {"max_prompt_tokens": recorded.get("max_prompt_tokens")}
    coverage = (metrics.get("memory") or {}).get("coverage") or {}
    gain = metrics.get("memory_gain")
    if not gain or gain.get("mean") is None:
        reason = (gain or {}).get("not_measured") or "no gain stage ran, or its engine cannot score prompts"
        gain_text = f"not measured ({reason})"
    else:
        gain_text = (f"mean {gain['mean']} nats/token over {gain.get('samples_measured', '?')} samples (p10 {gain.get('p10')}, "
                     f"p50 {gain.get('p50')}, p90 {gain.get('p90')}); what a perfect cartridge could remove, see memdistill's docs/gain.md")
    lines = [
        f"- **Snapshot:** `{_figure(row.get('snapshot'))}` (sha256 `{_figure(row.get('snapshot_sha256'))}`)",
        f"- **Strategy:** `{_figure(row.get('strategy'))}` with `{_figure(row.get('strategy_params'))}`",
        f"- **Teacher:** `{_figure(row.get('teacher_model'))}` ({_figure(row.get('teacher_backend'))} backend"
        f"{', ' + row['teacher_flavor'] + ' flavor' if row.get('teacher_flavor') else ''}), weights `{_figure(row.get('teacher_weights'))}`, "
        f"chat template sha256 `{_figure(row.get('chat_template_sha256'))}`",
        f"- **Generation:** max_tokens {_figure(generate.get('max_tokens'), '?')}, temperature {_figure(generate.get('temperature'), '?')}, "
        f"top_logprobs {_figure(generate.get('top_logprobs'), '?')}, logprobs {_figure(generate.get('logprobs'), '?')}",
        f"- **Prompt budget:** max_prompt_tokens {_figure(snapshots.get('max_prompt_tokens'), '?')}; memory coverage (kept / wanted "
        f"tokens) mean {_figure(coverage.get('mean'), '—')}, p10 {_figure(coverage.get('p10'), '—')}",
        f"- **Sparsification:** min_prob_mass {metrics.get('min_prob_mass')} (mean {metrics.get('mean_kept_per_token')} of K "
        f"{metrics.get('top_k')} entries kept per token)",
        f"- **Validation split:** fraction {_figure(convert.get('validation_fraction'), '?')} of the observations (hash of the "
        f"observation with seed {_figure(convert.get('validation_seed'), '?')}; every row of an observation in one split)",
        f"- **Memory gain:** {gain_text}",
        f"- **Made by:** memdistill {row.get('memdistill_version') or __version__} at git revision `{revision}`; inputs "
        + (", ".join(f"`{name}` md5 `{md5}`" for name, md5 in (footer.get("inputs") or {}).items()) or "not recorded"),
    ]
    return lines


def loading(front: dict[str, Any]) -> list[str]:
    files = {entry["split"]: entry["path"] for entry in front["configs"][0]["data_files"]}
    reads = "\n".join(f'{split} = pd.read_parquet("{path.removesuffix("/*.parquet")}").to_dict(orient="records")' for split, path in files.items())
    return [
        "With `datasets` (this folder, or its Hub repository):",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        'dataset = load_dataset("path/to/this/folder")  # or the Hub repo id',
        'print(dataset["train"][0]["messages"][-1]["top_logprobs"]["shape"])',
        "```",
        "",
        "With cartridges: its reader takes these files as they are (`pandas.read_parquet(path).to_dict(orient=\"records\")`, then "
        "`FlatTopLogprobs(**message[\"top_logprobs\"])` per assistant message); name them as its training data sources:",
        "",
        "```python",
        "import pandas as pd",
        "",
        reads,
        "```",
    ]


def render_card(
    train: Path, validation: Path | None, folder: Path, metrics: dict[str, Any], images: Sequence[tuple[str, str]] = (), revision: str = "unknown",
) -> str:
    front = front_matter(train, validation, folder)
    splits = metrics.get("splits") or {}
    finish = metrics.get("finish_reasons") or {}
    stops = finish.get("stop", 0)
    rows = [
        ("train samples", _figure((splits.get("train") or {}).get("samples"), "?")),
        ("validation samples", _figure((splits.get("validation") or {}).get("samples"), "0 (no split)")),
        ("assistant tokens", (metrics.get("assistant_tokens") or {}).get("total")),
        ("answers ending on their own (finish_reason stop)", f"{stops} of {metrics.get('samples')}"),
        ("top-K recorded / kept per token", f"{metrics.get('top_k')} / {metrics.get('mean_kept_per_token')}"),
        ("mean probability mass kept", metrics.get("mean_mass_kept")),
        ("parquet bytes", metrics.get("parquet_bytes")),
    ]
    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(), "---", ""]
    lines += [
        "# Memory distillation dataset",
        "",
        "Conversations in which a teacher that saw an agent's memory answers the agent's past observations, with its per-token "
        "top-k log-probabilities, in the cartridges training format: a student that sees no memory learns to match them "
        "(context distillation into a trainable KV prefix). Written by memdistill's stats stage; do not edit by hand.",
        "",
        "## Figures",
        "",
        "| figure | value |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in rows),
    ]
    if images:
        lines += ["", "## Plots", ""]
        for title, path in images:
            lines += [f"![{title}]({path})", ""]
        lines.pop()
    lines += ["", "## How it was made", "", *how_made(train, metrics, revision), "", "## Loading", "", *loading(front)]
    return "\n".join(lines) + "\n"
