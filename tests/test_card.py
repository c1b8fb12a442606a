"""The dataset card: the real `datasets` library loads the folder, both splits, the right rows and features."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from memdistill.convert.cartridges_io import SCHEMA
from memdistill.stats.card import feature, git_revision, render_card, size_category
from stages import convert as convert_stage
from stages import stats as stats_stage

from .conftest import write_jsonl
from .test_convert import read_like_cartridges
from .test_split import MODEL, four, observations, sample  # noqa: F401 - `four` is a fixture

datasets = pytest.importorskip("datasets")


def build(folder: Path, four: int, **convert_options) -> tuple[Path, Path, Path]:
    """A pipeline's data/ folder: convert with a validation split, then stats with the card."""
    folder.mkdir(parents=True, exist_ok=True)
    jsonl = write_jsonl(folder / "dataset.jsonl", [sample(o, i, four) for i, o in enumerate(observations(40))])
    train, validation, card = folder / "dataset.parquet", folder / "validation.parquet", folder / "README.md"
    convert_stage.run(convert_stage.ConvertConfig(model=MODEL, validation_fraction=0.25, **convert_options), jsonl, train,
                      validation=validation)
    stats_stage.run(jsonl, train, folder.parent / "metrics" / "stats.json", folder.parent / "plots", None,
                    stats_stage.StatsConfig(min_prob_mass=0.99), validation=validation, card=card)
    return train, validation, card


def rows_in(path: Path) -> int:
    return sum(pq.ParquetFile(p).metadata.num_rows for p in ([path] if path.is_file() else sorted(path.glob("*.parquet"))))


def front(card: Path) -> dict:
    _, header, _ = card.read_text(encoding="utf-8").split("---\n", 2)
    return yaml.safe_load(header)


@pytest.mark.parametrize("shards", [None, 2])
def test_datasets_loads_both_splits_from_the_folder(tmp_path: Path, four: int, shards: int | None) -> None:
    train, validation, card = build(tmp_path / "data", four, shards=shards)
    assert train.is_dir() == (shards is not None)
    loaded = datasets.load_dataset(str(tmp_path / "data"), cache_dir=str(tmp_path / "hf-cache"))
    assert set(loaded) == {"train", "validation"}
    assert loaded["train"].num_rows == rows_in(train) and loaded["validation"].num_rows == rows_in(validation) > 0
    assert loaded["train"].num_rows + loaded["validation"].num_rows == 40
    expected = datasets.Features.from_arrow_schema(pq.read_schema(next(iter([train] if train.is_file() else sorted(train.glob("*.parquet"))))))
    assert loaded["train"].features == expected == loaded["validation"].features
    assistant = loaded["validation"][0]["messages"][-1]
    assert assistant["role"] == "assistant" and list(assistant["top_logprobs"]["shape"]) == [2, 2]
    # pandas and the cartridges-style reader still read each file.
    for path in (train, validation):
        assert len(read_like_cartridges(path)) == rows_in(path)
    header = front(card)
    files = {entry["split"]: entry["path"] for entry in header["configs"][0]["data_files"]}
    assert files == ({"train": "dataset.parquet", "validation": "validation.parquet"} if shards is None
                     else {"train": "dataset.parquet/*.parquet", "validation": "validation.parquet/*.parquet"})
    assert header["size_categories"] == ["n<1K"] and "cartridges" in header["tags"]


def test_the_card_tells_how_the_data_was_made(tmp_path: Path, four: int) -> None:
    train, validation, card = build(tmp_path / "data", four)
    text = card.read_text(encoding="utf-8")
    for expected in ("## How it was made", "**Teacher:** `smollm2-135m-instruct`", "**Memory gain:** not measured",
                     "validation samples", "load_dataset(", "pd.read_parquet(\"dataset.parquet\")", "../plots/kept_per_token.svg",
                     "git revision `unknown`"):
        assert expected in text, expected
    metrics = {"samples": 3, "finish_reasons": {"stop": 3},
               "memory_gain": {"mean": 0.42, "p10": 0.1, "p50": 0.4, "p90": 0.8, "samples_measured": 3}}
    with_gain = render_card(train, validation, card.parent, metrics)
    assert "**Memory gain:** mean 0.42 nats/token over 3 samples (p10 0.1, p50 0.4, p90 0.8)" in with_gain


def test_an_empty_validation_split_is_not_named(tmp_path: Path, four: int) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    jsonl = write_jsonl(folder / "dataset.jsonl", [sample(o, i, four) for i, o in enumerate(observations(3))])
    convert_stage.run(convert_stage.ConvertConfig(model=MODEL), jsonl, folder / "dataset.parquet", validation=folder / "validation.parquet")
    text = render_card(folder / "dataset.parquet", folder / "validation.parquet", folder, {})
    assert [entry["split"] for entry in front_of(text)["configs"][0]["data_files"]] == ["train"]
    (folder / "README.md").write_text(text)
    assert set(datasets.load_dataset(str(folder), cache_dir=str(tmp_path / "hf-cache"))) == {"train"}


def front_of(text: str) -> dict:
    return yaml.safe_load(text.split("---\n", 2)[1])


def test_features_are_what_datasets_derives_from_the_schema() -> None:
    mine = [feature(field.name, field.type) for field in SCHEMA]
    assert mine == datasets.Features.from_arrow_schema(SCHEMA)._to_yaml_list()


@pytest.mark.parametrize(("rows", "label"), [(0, "n<1K"), (999, "n<1K"), (1000, "1K<n<10K"), (2_500_000, "1M<n<10M")])
def test_size_category(rows: int, label: str) -> None:
    assert size_category(rows) == label


def test_git_revision_is_head_or_unknown(tmp_path: Path) -> None:
    assert git_revision(tmp_path) == "unknown"
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["git", "-c", "user.email=a@b.invalid", "-c", "user.name=a", "commit", "-q", "--allow-empty", "-m", "x"], cwd=tmp_path, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()
    assert git_revision(tmp_path) == head
