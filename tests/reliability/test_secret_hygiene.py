"""With an API key set, a whole `dvc repro` against a server leaves the key in no file of the repository."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import REPO_ROOT
from tests.fake_teacher_server import FakeTeacherServer
from tests.test_pipeline_dvc import project_files

# Made at run time: a key written in this file would be found in the copied repository.
SECRET = "sk-" + secrets.token_hex(20)


def test_api_key_appears_in_no_file_after_a_full_pipeline_run(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    for name in project_files():
        target = repo / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, target)
    (repo / "dvc.lock").unlink(missing_ok=True)
    with FakeTeacherServer(flavor="vllm") as server:
        params = yaml.safe_load((repo / "params.yaml").read_text())
        params["snapshots"].update(max_samples=4, max_prompt_tokens=None)
        params["generate"].update(backend="openai", flavor="vllm", base_url=[server.url], model="fake-model",
                                  api_key_env="MEMDISTILL_TEST_KEY", max_tokens=6, top_logprobs=5)
        params["convert"].update(model="smollm2-135m-instruct")
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
        env = {**os.environ, "MEMDISTILL_TEST_KEY": SECRET, "DVC_NO_ANALYTICS": "1",
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        for command in (["git", "init", "-q"], ["git", "add", "-A"],
                        ["git", "-c", "user.email=ci@example.invalid", "-c", "user.name=ci", "commit", "-qm", "project"]):
            subprocess.run(command, cwd=repo, check=True, env=env)
        (repo / "logs").mkdir()
        with open(repo / "logs" / "repro.log", "w") as log:
            result = subprocess.run([sys.executable, "-m", "dvc", "repro", "-v"], cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT)
        assert result.returncode == 0, (repo / "logs" / "repro.log").read_text()[-3000:]
        assert f"Bearer {SECRET}" in server.auth_headers, "the key must really have been sent"
    assert (repo / "data" / "dataset.parquet").is_file()
    searched = 0
    for path in repo.rglob("*"):
        if path.is_file() and not path.is_symlink():
            searched += 1
            assert SECRET.encode() not in path.read_bytes(), f"{path.relative_to(repo)} contains the API key"
    assert searched > 50  # outputs, metrics, plots, dvc.lock, .dvc/cache, .memdistill, .git, logs
