"""Sharded outputs on the local executor: generate and convert write shard directories with the same
rows as single files, and convert, stats and inspect read a file or a shard directory alike."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pandas as pd
import pytest

from memdistill.convert.sharded import plan_units, spans_per_file
from memdistill.core import params
from memdistill.core.errors import UserError
from memdistill.core.shards import part_files
from memdistill.generate.engine import generate_dataset
from memdistill.stats.figures import compute_stats
from memdistill.stats.inspect import read_record, render_file_summary
from stages import convert as convert_stage
from tests.conftest import write_jsonl
from tests.echo_teacher import EchoTeacher
from tests.test_convert import mixed_records
from tests.test_generate import prompts, read_lines


def dataset_records(vocab: dict[str, int], count: int) -> list[dict]:
    """`count` records cycling through the convert tests' mixed shapes, each with its own sample_idx."""
    # The shape with a -inf entry is left out: stats (polars) reads strict JSON, without -Infinity.
    base = [r for r in mixed_records(vocab) if "Infinity" not in json.dumps(r)]
    out = []
    for index in range(count):
        row = json.loads(json.dumps(base[index % len(base)]))
        row["metadata"]["sample_idx"] = index
        row["messages"][1]["content"] = f"question {index}"
        out.append(row)
    return out


@pytest.fixture(scope="module")
def vocab() -> dict[str, int]:
    from memdistill.convert.token_ids import load_text_tokenizer

    return load_text_tokenizer("smollm2-135m-instruct").vocab


def convert(input_path: Path, output: Path, **options) -> None:
    config = convert_stage.ConvertConfig(**options)
    convert_stage.run(config, input_path, output)


def single_and_sharded(tmp_path: Path, rows: list[dict]) -> tuple[Path, Path]:
    """The same nine rows as one JSONL file and as a shard directory of three parts (4, 2 and 3 rows)."""
    single = write_jsonl(tmp_path / "dataset.jsonl", rows)
    folder = tmp_path / "sharded.jsonl"
    folder.mkdir()
    for index, chunk in enumerate((rows[:4], rows[4:6], rows[6:])):
        write_jsonl(folder / f"part-{index:05d}.jsonl", chunk)
    return single, folder


def records_of(path: Path) -> list[dict]:
    frame = pd.read_parquet(path)  # a file, or a shard directory as pandas (and cartridges) read it
    return json.loads(frame.to_json(orient="records"))


def test_sharded_convert_writes_the_rows_of_the_single_file_in_order(tmp_path: Path, vocab: dict[str, int]) -> None:
    source = write_jsonl(tmp_path / "dataset.jsonl", dataset_records(vocab, 11))
    convert(source, tmp_path / "single.parquet")
    convert(source, tmp_path / "sharded.parquet", shards=3)
    parts = part_files(tmp_path / "sharded.parquet")
    assert [p.name for p in parts] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert records_of(tmp_path / "sharded.parquet") == records_of(tmp_path / "single.parquet")
    # Back to one file where a directory was: the output is a file again.
    convert(source, tmp_path / "sharded.parquet")
    assert (tmp_path / "sharded.parquet").is_file()


def test_a_shard_directory_input_converts_part_by_part_and_stats_and_inspect_read_both(tmp_path: Path, vocab: dict[str, int]) -> None:
    rows = dataset_records(vocab, 9)
    single, folder = single_and_sharded(tmp_path, rows)
    convert(single, tmp_path / "single.parquet")
    convert(folder, tmp_path / "sharded.parquet")  # shards: null -> one part per input part
    assert len(part_files(tmp_path / "sharded.parquet")) == 3
    assert records_of(tmp_path / "sharded.parquet") == records_of(tmp_path / "single.parquet")

    from_files = compute_stats(single, tmp_path / "single.parquet", 0.99)
    from_shards = compute_stats(folder, tmp_path / "sharded.parquet", 0.99)
    def same_data(metrics: dict) -> dict:  # sizes differ: several files have several footers
        return {k: v for k, v in metrics.items() if "bytes" not in k and "_mb" not in k}

    assert same_data(from_shards.metrics) == same_data(from_files.metrics)
    assert from_shards.metrics["samples"] == 9

    for sample in (0, 3, 4, 8):  # first and last record of a part, across parts
        assert read_record(folder, sample)["metadata"]["sample_idx"] == sample
        assert read_record(tmp_path / "sharded.parquet", sample) == read_record(tmp_path / "single.parquet", sample)
    with pytest.raises(UserError, match="out of range .*9 records"):
        read_record(folder, 9)
    assert "samples" in render_file_summary(tmp_path / "sharded.parquet")


def test_a_bad_line_in_a_later_shard_is_named_by_its_line_in_the_whole_file(tmp_path: Path, vocab: dict[str, int]) -> None:
    rows = dataset_records(vocab, 12)
    text = "".join(json.dumps(r) + "\n" for r in rows).splitlines(keepends=True)
    text[10] = '{"messages": "not a list"}\n'
    source = tmp_path / "dataset.jsonl"
    source.write_text("".join(text))
    with pytest.raises(UserError, match=r"dataset\.jsonl:11: "):
        convert(source, tmp_path / "out.parquet", shards=4)
    assert not (tmp_path / "out.parquet").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["dataset.jsonl"]  # no half-written directory


def test_units_follow_the_input_by_size_and_never_split_a_parquet(tmp_path: Path, vocab: dict[str, int]) -> None:
    assert spans_per_file([100, 300], 8) == [2, 6]
    assert spans_per_file([100, 300, 5], 2) == [1, 1, 1]
    source = write_jsonl(tmp_path / "dataset.jsonl", dataset_records(vocab, 20))
    units = plan_units(source, 4)
    assert [u.part for u in units] == [0, 1, 2, 3] and units[0].span.start == 0
    assert units[-1].span.end == source.stat().st_size
    convert(source, tmp_path / "c.parquet")
    assert [u.span for u in plan_units(tmp_path / "c.parquet", 4)] == [None]


def test_unmapped_limit_applies_to_the_sum_of_the_parts(tmp_path: Path, vocab: dict[str, int]) -> None:
    # One record has an alternative whose id cannot be recovered (no token_id, a string no token decodes
    # to): a large share of one part's ids, less over the whole file.
    rows = dataset_records(vocab, 8)
    rows[0]["messages"][-1]["logprobs"]["content"][0]["top_logprobs"].append({"token": "\u2603no such token\u2603", "logprob": -9.0})
    source = write_jsonl(tmp_path / "dataset.jsonl", rows)
    with pytest.raises(UserError, match="could not be recovered exactly"):
        convert(source, tmp_path / "strict.parquet", shards=4, max_unmapped_rate=0.0)
    convert(source, tmp_path / "ok.parquet", shards=4, max_unmapped_rate=0.05)
    assert len(records_of(tmp_path / "ok.parquet")) == 8


def test_generate_writes_contiguous_jsonl_parts_with_the_single_file_rows(tmp_path: Path) -> None:
    generate_dataset(prompts(7), EchoTeacher(), tmp_path / "single.jsonl", tmp_path / "cache")
    summary = generate_dataset(prompts(7), EchoTeacher(), tmp_path / "sharded.jsonl", tmp_path / "cache", parts=3)
    assert summary.cache_hits == 7  # same requests, same store: nothing asked twice
    parts = part_files(tmp_path / "sharded.jsonl")
    assert len(parts) == 3
    assert [row for p in parts for row in read_lines(p)] == read_lines(tmp_path / "single.jsonl")


def test_shard_directories_and_every_file_follow_the_umask(tmp_path: Path, vocab: dict[str, int]) -> None:
    previous = os.umask(0o027)
    try:
        generate_dataset(prompts(5), EchoTeacher(), tmp_path / "dataset.jsonl", tmp_path / "cache", parts=2)
        generate_dataset(prompts(5), EchoTeacher(), tmp_path / "columnar", tmp_path / "cache", parts=2, output_format="parquet")
        source = write_jsonl(tmp_path / "records.jsonl", dataset_records(vocab, 6))
        convert(source, tmp_path / "dataset.parquet", shards=3)
    finally:
        os.umask(previous)
    written = list(tmp_path.rglob("*"))
    assert {p.name for p in written} >= {"dataset.jsonl", "columnar", "dataset.parquet", "part-00000.jsonl", "part-00001.parquet"}
    modes = {str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode) for p in written}
    assert modes == {name: 0o750 if (tmp_path / name).is_dir() else 0o640 for name in modes}


def test_convert_config_rejects_unknown_executor_and_bad_shards(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="convert.executor: expected one of local, ray"):
        params.validate(convert_stage.ConvertConfig, {"executor": "spark"})
    with pytest.raises(UserError, match="convert.shards: expected an integer >= 1 or null, got 0"):
        params.validate(convert_stage.ConvertConfig, {"shards": 0})


@pytest.mark.parametrize("parts", [1, 2])
def test_parquet_intermediate_output_reads_like_the_jsonl_everywhere(tmp_path: Path, parts: int) -> None:
    generate_dataset(prompts(5), EchoTeacher(), tmp_path / "dataset.jsonl", tmp_path / "cache")
    generate_dataset(prompts(5), EchoTeacher(), tmp_path / "columnar", tmp_path / "cache", parts=parts, output_format="parquet")
    assert all(p.read_bytes()[:4] == b"PAR1" for p in part_files(tmp_path / "columnar"))
    assert len(part_files(tmp_path / "columnar")) == parts

    options = dict(model="smollm2-135m-instruct", max_unmapped_rate=1.0)  # the echo teacher's ids are not real tokens
    convert(tmp_path / "dataset.jsonl", tmp_path / "from_jsonl.parquet", **options)
    convert(tmp_path / "columnar", tmp_path / "from_parquet.parquet", **options)
    assert records_of(tmp_path / "from_parquet.parquet") == records_of(tmp_path / "from_jsonl.parquet")

    from_jsonl = compute_stats(tmp_path / "dataset.jsonl", tmp_path / "from_jsonl.parquet", 0.99)
    from_parquet = compute_stats(tmp_path / "columnar", tmp_path / "from_parquet.parquet", 0.99)
    assert from_parquet.metrics == from_jsonl.metrics | {k: v for k, v in from_parquet.metrics.items() if "bytes" in k or "_mb" in k}
    curve_columns = [c for c in from_jsonl.plots["mass_curve"].columns if "bytes" not in c and "_mb" not in c]
    assert from_parquet.plots["mass_curve"].select(curve_columns).equals(from_jsonl.plots["mass_curve"].select(curve_columns))

    for sample in range(5):
        a, b = read_record(tmp_path / "columnar", sample), read_record(tmp_path / "dataset.jsonl", sample)
        assert a["metadata"] == b["metadata"]
        assert [m["logprobs"] and [i["token_id"] for i in m["logprobs"]["content"]] for m in a["messages"]] == \
               [m["logprobs"] and [i["token_id"] for i in m["logprobs"]["content"]] for m in b["messages"]]
    assert "recorded top-K entries" in render_file_summary(tmp_path / "columnar")


def test_the_cli_takes_the_new_flags_and_inspects_a_shard_directory(tmp_path: Path, vocab: dict[str, int], capsys) -> None:
    from memdistill.cli import main as cli_main

    source = write_jsonl(tmp_path / "dataset.jsonl", dataset_records(vocab, 6))
    assert cli_main(["convert", "--input", str(source), "--output", str(tmp_path / "out.parquet"), "--shards", "2", "--executor", "local"]) == 0
    assert len(part_files(tmp_path / "out.parquet")) == 2
    assert cli_main(["inspect", str(tmp_path / "out.parquet"), "--sample", "5", "--no-decode"]) == 0
    assert "sample_idx=5" in capsys.readouterr().out
    assert cli_main(["convert", "--input", str(source), "--output", str(tmp_path / "x.parquet"), "--shards", "0"]) == 2
    assert "--shards: expected an integer >= 1 or null, got 0" in capsys.readouterr().err
    assert not (tmp_path / "x.parquet").exists()


def test_executor_ray_without_ray_installed_says_how_to_install_it(tmp_path: Path, vocab: dict[str, int], monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    source = write_jsonl(tmp_path / "dataset.jsonl", dataset_records(vocab, 2))
    with pytest.raises(UserError, match=r"pip install 'memdistill\[ray\]'"):
        convert(source, tmp_path / "out.parquet", executor="ray")
    assert not (tmp_path / "out.parquet").exists()


def without_logprobs(row: dict) -> dict:
    row["messages"][-1]["logprobs"] = None
    return row


def test_sharded_convert_keeps_rejected_samples_out_of_every_part_and_lists_them_once(tmp_path: Path, vocab: dict[str, int]) -> None:
    rows = dataset_records(vocab, 8)
    for index in (1, 6):  # in the first and the last part
        without_logprobs(rows[index])
    source = write_jsonl(tmp_path / "dataset.jsonl", rows)
    convert(source, tmp_path / "single.parquet")
    convert(source, tmp_path / "sharded.parquet", shards=3)

    folder = tmp_path / "sharded.parquet"
    assert len(part_files(folder)) == 3
    assert all(p.name.startswith("part-") and p.suffix == ".parquet" for p in folder.iterdir())  # no per-part side files
    assert [r["metadata"]["sample_idx"] for r in records_of(folder)] == [0, 2, 3, 4, 5, 7]
    assert records_of(folder) == records_of(tmp_path / "single.parquet")
    # One listing beside the directory, numbered over the whole input: the single file's listing.
    listed = (tmp_path / "sharded.parquet.rejects.jsonl").read_text()
    assert [json.loads(line)["record"] for line in listed.splitlines()] == [1, 6]
    assert listed == (tmp_path / "single.parquet.rejects.jsonl").read_text()

    metrics = compute_stats(source, folder, 0.99).metrics  # no figures: reads the files, skips the rejects
    assert metrics["samples"] == 6 and metrics["rejected_samples"] == 2


def test_every_part_holds_the_metadata_struct(tmp_path: Path, vocab: dict[str, int]) -> None:
    import pyarrow.parquet as pq

    from memdistill.convert.cartridges_io import METADATA_TYPE

    source = write_jsonl(tmp_path / "dataset.jsonl", dataset_records(vocab, 7))
    convert(source, tmp_path / "sharded.parquet", shards=3)
    parts = part_files(tmp_path / "sharded.parquet")
    assert len(parts) == 3
    assert all(pq.read_schema(part).field("metadata").type == METADATA_TYPE for part in parts)
    assert [r["metadata"]["sample_idx"] for r in records_of(tmp_path / "sharded.parquet")] == list(range(7))


def test_sharded_convert_writes_the_whole_outputs_figures_and_stats_reads_them(
    tmp_path: Path, vocab: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    from dataclasses import asdict

    from memdistill.convert.figures import read_figures
    from memdistill.stats import figures as stats

    rows = dataset_records(vocab, 9)
    without_logprobs(rows[4])
    single, folder = single_and_sharded(tmp_path, rows)
    convert(single, tmp_path / "single.parquet")
    convert(folder, tmp_path / "sharded.parquet")

    whole, merged = read_figures(tmp_path / "single.figures.json"), read_figures(tmp_path / "sharded.figures.json")
    sizes = ("input_bytes", "parquet_bytes")
    assert {k: v for k, v in asdict(merged).items() if k not in sizes} == {k: v for k, v in asdict(whole).items() if k not in sizes}
    assert merged.rows == 8 and merged.rejected_rows == 1

    expected = compute_stats(single, tmp_path / "single.parquet", 0.99, figures=tmp_path / "single.figures.json")
    # The figures match a reading of the files, per record too: a rejected record in the middle of a
    # columnar block once wiped the counts of the block's other records.
    from_files = compute_stats(single, tmp_path / "single.parquet", 0.99)
    assert expected.samples.equals(from_files.samples)
    for name in ("recorded_entries", "kept_entries", "assistant_tokens", "samples"):
        assert expected.metrics[name] == from_files.metrics[name], name

    def never(*args, **kwargs):
        raise AssertionError("stats re-parsed the files although convert's figures were there")

    monkeypatch.setattr(stats, "jsonl_figures", never)
    monkeypatch.setattr(stats, "parquet_figures", never)
    from_shards = compute_stats(folder, tmp_path / "sharded.parquet", 0.99, figures=tmp_path / "sharded.figures.json")
    def same_data(metrics: dict) -> dict:  # sizes differ: several files have several footers
        return {k: v for k, v in metrics.items() if "bytes" not in k and "_mb" not in k}

    assert same_data(from_shards.metrics) == same_data(expected.metrics)
    assert from_shards.metrics["samples"] == 8 and from_shards.metrics["rejected_samples"] == 1


def test_parts_declaring_different_logprob_contracts_are_refused(tmp_path: Path, vocab: dict[str, int]) -> None:
    rows = dataset_records(vocab, 4)
    for index, row in enumerate(rows):
        row["metadata"].setdefault("teacher", {})["logprobs"] = "tempered" if index < 2 else "raw"
    folder = tmp_path / "dataset.jsonl"
    folder.mkdir()
    write_jsonl(folder / "part-00000.jsonl", rows[:2])  # each part is consistent on its own
    write_jsonl(folder / "part-00001.jsonl", rows[2:])
    with pytest.raises(UserError, match=r"part-00001.jsonl:1: metadata.teacher.logprobs is 'raw' but .*part-00000.jsonl:1 is 'tempered'"):
        convert(folder, tmp_path / "out.parquet")
    assert not (tmp_path / "out.parquet").exists() and not (tmp_path / "out.parquet.rejects.jsonl").exists()
