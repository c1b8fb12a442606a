from __future__ import annotations

from pathlib import Path

import pytest

from memdistill.errors import UserError
from memdistill.fileio import atomic_output, atomic_path, read_jsonl


def test_atomic_output_replaces_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    target.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic_output(target) as handle:
            handle.write("half of the new cont")
            raise RuntimeError("crash in the middle")
    assert target.read_text() == "old\n"
    assert list(tmp_path.iterdir()) == [target]
    with atomic_output(target) as handle:
        handle.write("new\n")
    assert target.read_text() == "new\n"


def test_atomic_path_removes_temporaries_left_by_a_killed_run(tmp_path: Path) -> None:
    target = tmp_path / "data.parquet"
    leftover = tmp_path / ".data.parquet.abc123.tmp"
    leftover.write_bytes(b"partial")
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"complete")
    assert target.read_bytes() == b"complete"
    assert not leftover.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.parquet"]


def test_missing_output_folder_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="output folder .*missing.* does not exist"):
        with atomic_output(tmp_path / "missing" / "out.jsonl"):
            pass


def test_read_jsonl_names_the_bad_line(tmp_path: Path) -> None:
    source = tmp_path / "x.jsonl"
    source.write_text('{"a": 1}\n\n{"a": \n')
    rows = read_jsonl(source)
    assert next(rows) == (1, {"a": 1})
    with pytest.raises(UserError, match=r"x\.jsonl:3: not valid JSON"):
        next(rows)
