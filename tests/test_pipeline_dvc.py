"""The DVC pipeline for real: repro in a temporary copy of the repository, partial re-runs, remotes.

These run the embedded teacher on a few samples, so they take a little while; they are the proof that
`dvc repro` and `dvc exp run` behave as the README says.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import REPO_ROOT

OUTPUTS = ["data/prompts.jsonl", "data/dataset.jsonl", "data/dataset.parquet"]


def run(cmd: list[str], cwd: Path) -> str:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def dvc(*args: str, cwd: Path) -> str:
    return run([sys.executable, "-m", "dvc", *args], cwd)


def project_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    return [name for name in listed if (REPO_ROOT / name).is_file()]


def project_repo(repo: Path, **snapshots: object) -> Path:
    """A fresh git repository holding the project without outputs, with a small configuration."""
    for name in project_files():
        target = repo / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, target)
    for name in ("dvc.lock", *OUTPUTS):
        (repo / name).unlink(missing_ok=True)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["snapshots"].update(max_samples=3, max_prompt_tokens=256, **snapshots)
    params["generate"].update(max_tokens=6, batch_size=3)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
    run(["git", "init", "-q"], repo)
    run(["git", "config", "user.email", "ci@example.invalid"], repo)
    run(["git", "config", "user.name", "ci"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "project"], repo)
    return repo


@pytest.fixture(scope="module")
def pipeline_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project reproduced once (the parameters naming no file, as params.yaml ships them)."""
    repo = project_repo(tmp_path_factory.mktemp("repo"))
    dvc("repro", cwd=repo)
    return repo


def test_repro_produces_every_declared_output(pipeline_repo: Path) -> None:
    prompts = [json.loads(line) for line in (pipeline_repo / "data/prompts.jsonl").read_text().splitlines()]
    assert [row["sample_idx"] for row in prompts] == [0, 1, 2]
    rows = [json.loads(line) for line in (pipeline_repo / "data/dataset.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    for row in rows:
        assistant = row["messages"][-1]
        assert assistant["role"] == "assistant"
        assert len(assistant["token_ids"]) == len(assistant["logprobs"]["content"]) >= 1
    table = pq.read_table(pipeline_repo / "data/dataset.parquet")
    assert table.num_rows == 3
    assert set(table.column_names) == {"messages", "system_prompt", "metadata", "type"}
    stats = json.loads((pipeline_repo / "metrics/stats.json").read_text())
    assert stats["samples"] == 3
    gains = pq.read_table(pipeline_repo / "data/gain.parquet").column("status").to_pylist()
    assert gains == ["measured"] * 3 and stats["memory_gain"]["mean"] is not None
    assert (pipeline_repo / "plots/memory_gain.svg").is_file()
    assert (pipeline_repo / "dvc.lock").is_file()
    status = dvc("status", cwd=pipeline_repo)
    assert "up to date" in status.lower()


def test_changing_min_prob_mass_reruns_only_convert_and_stats(pipeline_repo: Path) -> None:
    before = (pipeline_repo / "data/dataset.jsonl").read_bytes()
    before_stats = json.loads((pipeline_repo / "metrics/stats.json").read_text())
    run(["git", "add", "-A"], pipeline_repo)
    run(["git", "commit", "-qm", "reproduced", "--allow-empty"], pipeline_repo)
    output = dvc("exp", "run", "-S", "convert.min_prob_mass=0.5", cwd=pipeline_repo)
    assert "Running stage 'convert'" in output
    assert "Running stage 'stats'" in output
    assert "Running stage 'snapshots'" not in output
    assert "Running stage 'generate'" not in output
    assert (pipeline_repo / "data/dataset.jsonl").read_bytes() == before
    after_stats = json.loads((pipeline_repo / "metrics/stats.json").read_text())
    # A lower mass threshold never keeps more entries per token.
    assert after_stats["kept_per_token"] < before_stats["kept_per_token"]


def test_changing_min_memory_gain_reruns_only_convert_and_stats(pipeline_repo: Path) -> None:
    run(["git", "add", "-A"], pipeline_repo)
    run(["git", "commit", "-qm", "reproduced", "--allow-empty"], pipeline_repo)
    # Below any gain: every sample stays (so the parquet, and with it stats, does not change); which stages ran
    # is the point.
    output = dvc("exp", "run", "-S", "convert.min_memory_gain=-100", cwd=pipeline_repo)
    assert "Running stage 'convert'" in output
    for stage in ("snapshots", "generate", "gain"):
        assert f"Running stage '{stage}'" not in output
    assert pq.read_table(pipeline_repo / "data/dataset.parquet").num_rows == 3


def test_push_and_pull_through_a_local_remote(pipeline_repo: Path, tmp_path: Path) -> None:
    dvc("checkout", "--force", cwd=pipeline_repo)
    originals = {name: (pipeline_repo / name).read_bytes() for name in OUTPUTS}
    remote = tmp_path / "remote"
    dvc("remote", "add", "--force", "-d", "store", str(remote), cwd=pipeline_repo)
    pushed = run([sys.executable, "-m", "memdistill.cli", "dvc-push"], pipeline_repo)
    assert "the outputs need are there" in pushed and "were missing" not in pushed, pushed
    for name in OUTPUTS:
        (pipeline_repo / name).unlink()
    shutil.rmtree(pipeline_repo / ".dvc" / "cache")
    dvc("pull", cwd=pipeline_repo)
    for name, content in originals.items():
        assert (pipeline_repo / name).read_bytes() == content, name


def test_committed_lock_matches_the_committed_code(tmp_path: Path) -> None:
    """What a fresh clone sees: `dvc status` may only miss the outputs (not in the clone), never find a code
    dependency or a parameter that differs from what dvc.lock recorded. A stale lock makes `make run`
    re-run stages nobody changed, and `dvc status` after it disagree with git."""
    repo = tmp_path / "clone"
    for name in project_files():
        target = repo / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, target)
    run(["git", "init", "-q"], repo)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", DVC_NO_ANALYTICS="1")
    listed = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=repo, env=env, capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    status = json.loads(listed.stdout.strip() or "{}")
    produced = {
        str(next(iter(out)) if isinstance(out, dict) else out)
        for stage in yaml.safe_load((repo / "dvc.yaml").read_text())["stages"].values()
        for key in ("outs", "metrics")
        for out in stage.get(key, [])
    }
    stale = []
    for stage, changes in status.items():
        for change in changes:
            if not isinstance(change, dict):
                stale.append(f"{stage}: {change}")
                continue
            for kind, entries in change.items():
                if kind == "changed outs":
                    continue  # a clone has no outputs until `dvc pull` or `make run`
                if kind == "changed deps":
                    stale += [f"{stage}: {path} {what}" for path, what in entries.items() if path not in produced]
                else:
                    stale.append(f"{stage}: {kind} {entries}")
    assert not stale, "dvc.lock does not match the committed code (run `dvc repro` and commit dvc.lock): " + "; ".join(stale)


def test_editing_a_file_a_parameter_names_makes_the_snapshots_stage_changed(tmp_path: Path) -> None:
    """observations and system_prompt_file name files: dvc.yaml makes them dependencies of snapshots."""
    repo = project_repo(tmp_path, observations="held_out.jsonl", system_prompt_file="agent_prompt.txt")
    (repo / "held_out.jsonl").write_text('{"content": "What is 6*7?"}\n')
    (repo / "agent_prompt.txt").write_text("You are a calculator.\n")
    dvc("repro", "snapshots", cwd=repo)
    assert "up to date" in dvc("status", "snapshots", cwd=repo).lower()
    for name, appended in (("held_out.jsonl", '{"content": "What is 2+2?"}\n'), ("agent_prompt.txt", "Answer briefly.\n")):
        with open(repo / name, "a", encoding="utf-8") as handle:
            handle.write(appended)
        status = dvc("status", "snapshots", cwd=repo)
        assert "changed deps" in status and re.search(rf"modified:\s+{re.escape(name)}", status), status
        dvc("repro", "snapshots", cwd=repo)
    assert len((repo / "data/prompts.jsonl").read_text().splitlines()) == 2


def test_failed_generate_keeps_the_last_dataset(pipeline_repo: Path) -> None:
    """generate's outputs are `persist: true`: DVC does not delete them before a run that then fails."""
    dvc("checkout", "--force", cwd=pipeline_repo)
    kept = {name: (pipeline_repo / name).read_bytes() for name in ("data/dataset.jsonl", "metrics/generate.json")}
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", DVC_NO_ANALYTICS="1")
    failed = subprocess.run(
        [sys.executable, "-m", "dvc", "exp", "run", "-S", "generate.backend=openai", "-S", "generate.base_url=[http://127.0.0.1:9/v1]",
         "-S", "generate.max_retries=0", "-S", "generate.timeout=2"],
        cwd=pipeline_repo, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert failed.returncode != 0, failed.stdout
    assert "memdistill generate: error:" in failed.stdout + failed.stderr
    for name, content in kept.items():
        assert (pipeline_repo / name).read_bytes() == content, name
    run(["git", "checkout", "--", "params.yaml"], pipeline_repo)
