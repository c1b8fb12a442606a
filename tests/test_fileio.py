from __future__ import annotations

import argparse
import errno
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from memdistill.cli import main
from memdistill.core.errors import UserError
from memdistill.core.fileio import atomic_output, atomic_path, local_path, lock_path, output_lock, read_jsonl
from tests.conftest import REPO_ROOT


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


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_follow_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    previous = os.umask(umask)
    try:
        with atomic_output(tmp_path / "out.jsonl") as handle:
            handle.write("x\n")
        with atomic_path(tmp_path / "out.parquet") as tmp:
            tmp.write_bytes(b"PAR1")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "out.jsonl").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "out.parquet").stat().st_mode) == mode


def test_errors_name_the_output_not_the_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    with pytest.raises(OSError) as caught:
        with atomic_path(target) as tmp:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
    assert caught.value.filename == str(target)
    with pytest.raises(OSError) as caught:
        with atomic_output(target) as handle:
            raise OSError(errno.EFBIG, "File too large")  # write() errors carry no file name
    assert caught.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []


def test_a_second_writer_waits_for_the_lock_and_names_its_holder(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    script = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.INFO, format='%(message)s')\n"
        "from memdistill.core.fileio import atomic_output\n"
        "with atomic_output(sys.argv[1]) as handle:\n"
        "    handle.write('second\\n')\n"
    )
    with output_lock(target):
        process = subprocess.Popen(
            [sys.executable, "-c", script, str(target)], cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True
        )
        with pytest.raises(subprocess.TimeoutExpired):
            process.wait(timeout=3)  # still waiting: the lock is ours
        assert not target.exists()
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert f"{target} is being written by pid {os.getpid()}; waiting for it to finish" in err
    assert target.read_text() == "second\n"


def test_read_jsonl_too_deep_is_one_error(tmp_path: Path) -> None:
    source = tmp_path / "deep.jsonl"
    source.write_text("[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(UserError, match=r"deep\.jsonl:1: JSON nested too deeply"):
        list(read_jsonl(source))


def test_library_messages_name_the_output_too(tmp_path: Path) -> None:
    target = tmp_path / "out.parquet"
    with pytest.raises(OSError) as caught:
        with atomic_path(target) as tmp:
            raise OSError(f"Failed to open local file '{tmp}'")  # how pyarrow words it
    assert str(caught.value) == f"Failed to open local file '{target}'"


def test_lock_folder_falls_back_when_the_cache_is_not_writable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("")
    monkeypatch.setenv("MEMDISTILL_CACHE", str(blocked))  # mkdir under a file fails
    with atomic_output(tmp_path / "out.jsonl") as handle:
        handle.write("x\n")
    assert (tmp_path / "out.jsonl").read_text() == "x\n"
    assert lock_path(tmp_path / "out.jsonl").parent.name == f"memdistill-locks-{os.getuid()}"


@pytest.mark.parametrize(
    ("args", "where"),
    [
        (["generate", "--input", "prompts.jsonl", "--output", "s3://bucket/dataset.jsonl"], "--output: "),
        (["generate", "--input", "prompts.jsonl", "--output", "out.jsonl", "--cache-dir", "s3://bucket/cache"], "--cache-dir: "),
        (["convert", "--input", "gs://bucket/dataset.jsonl", "--output", "out.parquet"], "--input: "),
        (["snapshots", "--checkpoint-dir", "s3://bucket/ep_000200", "--strategy", "full_memory", "--output", "p.jsonl"], "--checkpoint-dir: "),
        (["stats", "--jsonl", "d.jsonl", "--parquet", "d.parquet", "--metrics", "m.json", "--plots-dir", "file:///tmp/plots"], "--plots-dir: "),
        (["inspect", "hdfs://namenode/dataset.parquet"], "file: "),
    ],
)
def test_a_url_for_a_path_is_one_line_and_creates_no_local_folder(
    args: list[str], where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prompts.jsonl").write_text('{"sample_idx": 0, "teacher_messages": [], "student_messages": []}\n')
    assert main(args) == 2
    url = next(arg for arg in args if "://" in arg)
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (f"memdistill {args[0]}: error: {where}{url} is a URL; memdistill reads and writes local paths only (on a cluster: a filesystem "
                         "every node mounts, e.g. NFS or Lustre; mount a bucket with s3fs or gcsfuse, or copy the files)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompts.jsonl"]  # no `s3:` folder, no output


def test_windows_drives_and_odd_local_names_stay_paths() -> None:
    assert local_path("C:/data/x.jsonl") == Path("C:/data/x.jsonl")
    assert local_path("runs/a:b/x.jsonl") == Path("runs/a:b/x.jsonl")
    with pytest.raises(argparse.ArgumentTypeError, match="is a URL"):
        local_path("s3://bucket/x.jsonl")
