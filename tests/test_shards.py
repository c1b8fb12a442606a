"""Shard directories: line spans, part sizes, part listing and the all-or-nothing directory swap."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memdistill.core.errors import UserError
from memdistill.core.shards import (
    atomic_directory,
    part_files,
    part_name,
    part_sizes,
    split_lines,
    write_jsonl_lines,
)

lines_strategy = st.lists(
    st.one_of(st.text(alphabet="ab{}\":, é", min_size=0, max_size=30), st.just("")), min_size=0, max_size=40
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=lines_strategy, count=st.integers(1, 9), trailing_newline=st.booleans(), chunk=st.sampled_from([1, 3, 64, 1 << 20]))
def test_spans_cover_the_file_in_whole_lines_with_true_line_numbers(tmp_path: Path, lines: list[str], count: int, trailing_newline: bool, chunk: int) -> None:
    text = "\n".join(lines) + ("\n" if trailing_newline and lines else "")
    path = tmp_path / "data.jsonl"
    data = text.encode("utf-8")
    path.write_bytes(data)
    spans = split_lines(path, count, chunk_bytes=chunk)
    assert 1 <= len(spans) <= count
    assert spans[0].start == 0 and spans[-1].end == len(data)
    for before, after in zip(spans, spans[1:]):
        assert before.end == after.start and before.start < before.end
        assert data[after.start - 1 : after.start] == b"\n"  # every cut falls right after a newline
    for span in spans:
        assert span.first_line == data[: span.start].count(b"\n") + 1


def test_spans_are_about_equal_in_size(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text("".join(f'{{"row": {i:04d}}}\n' for i in range(1000)))
    spans = split_lines(path, 4)
    sizes = [s.end - s.start for s in spans]
    assert len(spans) == 4 and max(sizes) - min(sizes) <= len('{"row": 0000}\n')


@given(count=st.integers(0, 500), parts=st.integers(1, 40))
def test_part_sizes_add_up_and_differ_by_at_most_one(count: int, parts: int) -> None:
    sizes = part_sizes(count, parts)
    assert sum(sizes) == count
    assert len(sizes) == (max(1, min(parts, count)) if count else 1)
    assert max(sizes) - min(sizes) <= 1


def test_part_files_lists_parts_in_order_and_rejects_what_is_not_a_dataset(tmp_path: Path) -> None:
    folder = tmp_path / "dataset.jsonl"
    folder.mkdir()
    with pytest.raises(UserError, match="without part-"):
        part_files(folder)
    for index in (2, 0, 10, 1):
        (folder / part_name(index, ".jsonl")).write_text("{}\n")
    (folder / ".part-00003.jsonl.tmp").write_text("")  # not a part
    assert [p.name for p in part_files(folder)] == ["part-00000.jsonl", "part-00001.jsonl", "part-00002.jsonl", "part-00010.jsonl"]
    single = tmp_path / "one.jsonl"
    single.write_text("{}\n")
    assert part_files(single) == [single]
    with pytest.raises(UserError, match="missing.jsonl: file not found"):
        part_files(tmp_path / "missing.jsonl")


def test_a_failed_write_keeps_the_previous_output_and_a_good_one_replaces_a_file(tmp_path: Path) -> None:
    target = tmp_path / "dataset.parquet"
    target.write_text("previous single file")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as folder:
            (folder / part_name(0, ".parquet")).write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "previous single file"
    assert [p.name for p in tmp_path.iterdir()] == ["dataset.parquet"]  # no temporary directory left
    with atomic_directory(target) as folder:
        (folder / part_name(0, ".parquet")).write_text("new")
    assert target.is_dir() and (target / "part-00000.parquet").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["dataset.parquet"]


def test_jsonl_lines_go_to_contiguous_parts_in_order_or_to_one_file(tmp_path: Path) -> None:
    lines = [f'{{"i": {i}}}\n' for i in range(7)]
    target = tmp_path / "dataset.jsonl"
    write_jsonl_lines(target, iter(lines), len(lines), 3)
    parts = part_files(target)
    assert [len(p.read_text().splitlines()) for p in parts] == [2, 2, 3]
    assert "".join(p.read_text() for p in parts) == "".join(lines)
    write_jsonl_lines(target, iter(lines), len(lines), 1)  # back to one file: the directory goes
    assert target.is_file() and target.read_text() == "".join(lines)
