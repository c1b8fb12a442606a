"""Helpers for the reliability suite: run the CLI as a real process, kill it, compare outputs."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import REPO_ROOT

CLI = [sys.executable, "-m", "memdistill.cli"]


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{REPO_ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra or {})
    return env


def run_cli(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], cwd=cwd, env=env or cli_env(), capture_output=True, text=True)


@dataclass
class CrashReport:
    rounds: int
    killed_with_output_present: int
    killed_before_output: int
    finished_before_kill: int


def crash_rounds(
    args: list[str],
    cwd: Path,
    outputs: list[Path],
    rounds: int,
    seed: int,
    env: dict[str, str] | None = None,
    after_kill: Callable[[int], None] | None = None,
) -> CrashReport:
    """Kill `memdistill args` with SIGKILL at random moments, re-run it normally after each kill.

    Every output must, at every observation point, be absent or byte-identical to an uninterrupted run's;
    after each normal re-run it must be identical. The reference comes from a first uninterrupted run.
    """
    env = env or cli_env()
    # The first run may also fill caches (the embedded tokenizer on a fresh machine): time the second one,
    # which must also reproduce the first byte for byte.
    first = run_cli(args, cwd, env)
    assert first.returncode == 0, first.stderr
    reference = {path: path.read_bytes() for path in outputs}
    started = time.perf_counter()
    second = run_cli(args, cwd, env)
    assert second.returncode == 0, second.stderr
    duration = time.perf_counter() - started
    assert {path: path.read_bytes() for path in outputs} == reference, "two uninterrupted runs differ"
    rng = random.Random(seed)
    report = CrashReport(rounds, 0, 0, 0)
    for number in range(rounds):
        if number % 2 == 0:  # half the rounds start from nothing, half from a complete earlier output
            for path in outputs:
                path.unlink(missing_ok=True)
        process = subprocess.Popen([*CLI, *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.05, duration * 0.9))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()
            present = [path for path in outputs if path.exists()]
            report.killed_with_output_present += bool(present)
            report.killed_before_output += not present
        else:
            report.finished_before_kill += 1
        for path in outputs:
            if path.exists():
                assert path.read_bytes() == reference[path], f"round {number}: {path} holds a partial or different file"
        if after_kill:
            after_kill(number)
        rerun = run_cli(args, cwd, env)
        assert rerun.returncode == 0, f"round {number}: re-run failed: {rerun.stderr}"
        for path in outputs:
            assert path.read_bytes() == reference[path], f"round {number}: re-run output differs: {path}"
    return report
