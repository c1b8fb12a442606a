"""Missing or read-only output folders, a full disk, an interrupted `dvc push`: clean errors, nothing lost."""

from __future__ import annotations

import os
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.reliability.data import write_dataset, write_snapshot
from tests.reliability.harness import CLI, cli_env, run_cli


def assert_one_clean_error(result: subprocess.CompletedProcess[str], command: str) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith(f"memdistill {command}: error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_missing_output_folder_is_one_clean_line(tmp_path: Path) -> None:
    write_snapshot(tmp_path / "ep_000001", samples=3)
    result = run_cli(["snapshots", "--checkpoint-dir", str(tmp_path / "ep_000001"), "--strategy", "full_memory",
                      "--output", str(tmp_path / "nowhere" / "prompts.jsonl")], tmp_path)
    line = assert_one_clean_error(result, "snapshots")
    assert "nowhere" in line and "does not exist" in line
    assert not (tmp_path / "nowhere").exists()


def run_with_mounts(mounts: list[str], args: list[str], cwd: Path, after: str = "true") -> subprocess.CompletedProcess[str]:
    """Run the CLI in a private mount namespace after `mounts` (shell commands): a read-only folder or a
    tiny tmpfs, without touching the machine's own mounts; `after` runs in the same namespace and its
    stdout comes back. Needs root, as the tests have here."""
    cli = " ".join(shlex.quote(part) for part in [*CLI, *args])
    command = " && ".join(mounts) + f" && {{ {cli}; status=$?; {after}; exit $status; }}"
    return subprocess.run(["unshare", "-m", "sh", "-c", command], cwd=cwd, env=cli_env(), capture_output=True, text=True)


def test_read_only_output_folder_is_one_clean_line(tmp_path: Path) -> None:
    write_snapshot(tmp_path / "ep_000001", samples=3)
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "prompts.jsonl").write_text("earlier complete output\n")
    args = ["snapshots", "--checkpoint-dir", str(tmp_path / "ep_000001"), "--strategy", "full_memory", "--output", str(locked / "prompts.jsonl")]
    folder = shlex.quote(str(locked))
    result = run_with_mounts([f"mount --bind {folder} {folder}", f"mount -o remount,bind,ro {folder}"], args, tmp_path)
    line = assert_one_clean_error(result, "snapshots")
    assert "read-only file system" in line.lower()
    assert (locked / "prompts.jsonl").read_text() == "earlier complete output\n"
    rerun = run_cli(args, tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert (locked / "prompts.jsonl").read_text().count("\n") == 3


def test_full_tmpfs_leaves_no_partial_output(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "dataset.jsonl", rows=200, tokens=30)
    disk = tmp_path / "disk"
    disk.mkdir()
    args = ["convert", "--input", str(dataset), "--output", str(disk / "dataset.parquet")]
    folder = shlex.quote(str(disk))
    result = run_with_mounts([f"mount -t tmpfs -o size=64k tmpfs {folder}"], args, tmp_path, after=f"ls -A {folder}")
    line = assert_one_clean_error(result, "convert")
    assert "no space left" in line.lower()
    assert result.stdout == ""  # the full disk holds neither a partial parquet nor a temporary file
    rerun = run_cli(args, tmp_path)
    assert rerun.returncode == 0, rerun.stderr


def test_full_disk_leaves_earlier_output_and_rerun_succeeds(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "dataset.jsonl", rows=200, tokens=30)
    output = tmp_path / "dataset.parquet"
    output.write_bytes(b"an earlier complete parquet file")
    limit = 64 * 1024  # the output needs several hundred KiB: the disk "fills up" half-way through

    def small_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    args = ["convert", "--input", str(dataset), "--output", str(output)]
    result = subprocess.run([*CLI, *args], cwd=tmp_path, env=cli_env(), capture_output=True, text=True, preexec_fn=small_disk)
    line = assert_one_clean_error(result, "convert")
    assert "too large" in line.lower() or "no space" in line.lower()
    assert output.read_bytes() == b"an earlier complete parquet file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset.jsonl", "dataset.parquet"]
    rerun = run_cli(args, tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert output.stat().st_size > limit


def _dvc(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=cli_env({"DVC_NO_ANALYTICS": "1"}), capture_output=True, text=True)
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.mark.parametrize("kill_after", [0.3, 1.0, 2.0])
def test_interrupted_dvc_push_loses_nothing(tmp_path: Path, kill_after: float) -> None:
    repo, remote = tmp_path / "repo", tmp_path / "remote"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    _dvc(["init", "-q"], repo)
    data = repo / "data"
    data.mkdir()
    for number in range(40):
        (data / f"part{number:02d}.bin").write_bytes(os.urandom(256 * 1024))
    originals = {p.name: p.read_bytes() for p in data.iterdir()}
    _dvc(["add", "data"], repo)
    _dvc(["remote", "add", "-d", "store", str(remote)], repo)
    env = cli_env({"DVC_NO_ANALYTICS": "1"})
    push = subprocess.Popen([sys.executable, "-m", "dvc", "push"], cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(kill_after)
    push.send_signal(signal.SIGKILL)
    push.wait()
    _dvc(["push"], repo)
    shutil.rmtree(data)
    shutil.rmtree(repo / ".dvc" / "cache")
    _dvc(["pull"], repo)
    assert {p.name: p.read_bytes() for p in data.iterdir()} == originals
