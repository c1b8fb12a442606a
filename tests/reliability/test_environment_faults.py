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


def _dvc_repo(tmp_path: Path, files: int, size: int) -> tuple[Path, Path, dict[str, bytes]]:
    """A git+DVC repository with a `data` folder of random files tracked by DVC and a local-folder remote."""
    repo, remote = tmp_path / "repo", tmp_path / "remote"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    _dvc(["init", "-q"], repo)
    data = repo / "data"
    data.mkdir()
    for number in range(files):
        (data / f"part{number:02d}.bin").write_bytes(os.urandom(size))
    _dvc(["add", "data"], repo)
    _dvc(["remote", "add", "-d", "store", str(remote)], repo)
    return repo, remote, {p.name: p.read_bytes() for p in data.iterdir()}


def _dvc_push(repo: Path) -> subprocess.CompletedProcess[str]:
    result = run_cli(["dvc-push"], repo, env=cli_env({"DVC_NO_ANALYTICS": "1"}))
    assert result.returncode == 0, result.stderr
    return result


def _pull_into_empty_cache(repo: Path) -> dict[str, bytes]:
    shutil.rmtree(repo / "data")
    shutil.rmtree(repo / ".dvc" / "cache")
    _dvc(["pull"], repo)
    return {p.name: p.read_bytes() for p in (repo / "data").iterdir()}


def _remote_objects(remote: Path) -> list[Path]:
    return sorted(p for p in remote.rglob("*") if p.is_file()) if remote.exists() else []


# `dvc push`, SIGKILLed once it has stored the given number of entries of the list of objects it collected
# for the push: the state a kill (or a lost machine) at that moment leaves behind, every time.
KILL_WHILE_COLLECTING = """
import os, signal, sys
from dvc_data.index import index
limit, stored = int(sys.argv[1]), 0
store = index.DataIndex.__setitem__
def counted(self, key, value):
    global stored
    if key and key[0] == "push":
        stored += 1
        if stored > limit:
            os.kill(os.getpid(), signal.SIGKILL)
    store(self, key, value)
index.DataIndex.__setitem__ = counted
from dvc.cli import main
sys.exit(main(["push"]))
"""


def test_push_killed_while_collecting_loses_nothing(tmp_path: Path) -> None:
    repo, remote, originals = _dvc_repo(tmp_path, files=40, size=1000)
    killed = subprocess.run([sys.executable, "-c", KILL_WHILE_COLLECTING, "14"], cwd=repo,
                            env=cli_env({"DVC_NO_ANALYTICS": "1"}), capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert _remote_objects(remote) == []  # killed before uploading anything
    pushed = _dvc_push(repo)
    # `dvc push` itself uploaded everything: the partial list the kill left was dropped, not used.
    assert "41 object(s) pushed; all 41 the outputs need are there" in pushed.stdout, pushed.stdout
    assert "were missing" not in pushed.stdout
    assert len(_remote_objects(remote)) == 41
    assert _pull_into_empty_cache(repo) == originals


def test_dvc_push_uploads_what_the_remote_lacks_after_a_push(tmp_path: Path) -> None:
    repo, remote, originals = _dvc_repo(tmp_path, files=10, size=1000)
    first = _dvc_push(repo)
    assert "11 object(s) pushed" in first.stdout and "were missing" not in first.stdout, first.stdout
    # The remote as a push that skipped files leaves it: the directory's manifest, not all of its files.
    lost = [p for p in _remote_objects(remote) if not p.name.endswith(".dir")][:3]
    for path in lost:
        path.unlink()
    again = _dvc_push(repo)
    assert "3 were missing and are now uploaded" in again.stdout, again.stdout
    assert all(path.exists() for path in lost)
    assert _pull_into_empty_cache(repo) == originals


def test_dvc_push_outside_a_dvc_repository_is_one_clean_line(tmp_path: Path) -> None:
    result = run_cli(["dvc-push"], tmp_path, env=cli_env({"DVC_NO_ANALYTICS": "1"}))
    line = assert_one_clean_error(result, "dvc-push")
    assert "not inside a DVC repository" in line


@pytest.mark.parametrize("kill_after", [0.3, 1.0, 2.0])
def test_interrupted_dvc_push_loses_nothing(tmp_path: Path, kill_after: float) -> None:
    repo, remote, originals = _dvc_repo(tmp_path, files=40, size=256 * 1024)
    env = cli_env({"DVC_NO_ANALYTICS": "1"})
    push = subprocess.Popen([sys.executable, "-m", "dvc", "push"], cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(kill_after)
    push.send_signal(signal.SIGKILL)
    push.wait()
    _dvc_push(repo)
    assert _pull_into_empty_cache(repo) == originals
