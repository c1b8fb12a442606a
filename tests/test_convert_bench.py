"""The benchmark's pieces: synthetic data converts exactly, and a straightforward baseline keeps the same ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.bench_convert import kept_ids
from bench.convert_baseline import convert_baseline
from bench.synthetic import SyntheticSpec, load_vocabulary, write_synthetic
from memdistill.convert.conversion import convert_file
from memdistill.core.models import load_tokenizer

MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def vocabulary():
    return load_vocabulary(MODEL)


@pytest.mark.parametrize("with_bytes", [True, False])
def test_synthetic_data_converts_like_the_baseline(tmp_path: Path, vocabulary, with_bytes: bool) -> None:
    source = tmp_path / "synthetic.jsonl"
    rows = write_synthetic(source, SyntheticSpec(entries=6000, mean_tokens=30, with_bytes=with_bytes, seed=3), vocabulary)
    first = json.loads(source.read_text().splitlines()[0])
    entry = first["messages"][2]["logprobs"]["content"][0]["top_logprobs"][0]
    assert "token_id" not in entry and ("bytes" in entry) == with_bytes and len(first["messages"][2]["logprobs"]["content"][0]["top_logprobs"]) == 20

    summary = convert_file(source, tmp_path / "ours.parquet", MODEL, 0.99)
    assert summary.rows == rows and summary.topk_entries == 6000 and summary.eot_appended == 0
    # Flat rows keep all 20, peaked ones a few: both kinds are present.
    assert 300 < summary.kept_entries < 6000
    if with_bytes:
        assert summary.unmapped_ids == 0
    convert_baseline(source, tmp_path / "baseline.parquet", load_tokenizer(MODEL), 0.99)
    assert kept_ids(tmp_path / "ours.parquet") == kept_ids(tmp_path / "baseline.parquet")


def test_synthetic_ids_are_the_true_ids(tmp_path: Path, vocabulary) -> None:
    """With bytes, every recovered chosen id is the id the generator drew (decoded text -> id is exact)."""
    source = tmp_path / "synthetic.jsonl"
    write_synthetic(source, SyntheticSpec(entries=2000, mean_tokens=20, seed=5), vocabulary)
    convert_file(source, tmp_path / "ours.parquet", MODEL, 0.99)
    records = [json.loads(line) for line in source.read_text().splitlines()]
    for (token_ids, _, _), record in zip(kept_ids(tmp_path / "ours.parquet"), records):
        items = record["messages"][2]["logprobs"]["content"]
        assert [vocabulary.raw[i] for i in token_ids] == [item["bytes"] for item in items]
        assert token_ids[-1] == vocabulary.end_of_turn


@pytest.mark.parametrize("with_bytes", [True, False])
def test_synthetic_blocks_convert_whole_and_as_checked_records_alike(tmp_path: Path, vocabulary, monkeypatch, with_bytes: bool) -> None:
    """Byte-identical parquet whether arrow reads the blocks or every record is checked and normalised first,
    over several blocks; on the arrow route no block is left to the check."""
    from memdistill.convert import checks, conversion, records

    source = tmp_path / "synthetic.jsonl"
    write_synthetic(source, SyntheticSpec(entries=6000, mean_tokens=30, with_bytes=with_bytes, seed=7), vocabulary)
    monkeypatch.setattr(conversion, "BLOCK_BYTES", 20_000)  # a handful of lines per block
    blocks, checked = [], []
    parse_lines, normalised = records.parse_lines, checks.RecordChecker.normalised

    def counting(chunk, options):
        blocks.append(len(chunk.lines))
        return parse_lines(chunk, options)

    def counting_checks(checker, block):
        checked.append(block.wheres[0])
        return normalised(checker, block)

    monkeypatch.setattr(conversion, "parse_lines", counting)
    monkeypatch.setattr(checks.RecordChecker, "normalised", counting_checks)
    convert_file(source, tmp_path / "arrow.parquet", MODEL, 0.99)
    assert len(blocks) > 2 and checked == []

    def unreadable(chunk, options):
        raise records.Unreadable("checked route")

    monkeypatch.setattr(conversion, "parse_lines", unreadable)
    convert_file(source, tmp_path / "checked.parquet", MODEL, 0.99)
    assert len(checked) > 2
    assert (tmp_path / "arrow.parquet").read_bytes() == (tmp_path / "checked.parquet").read_bytes()
