"""`memdistill push` against a loopback Hub (tests/fake_hub.py): what arrives, what is refused, where the token goes.

The pushes run the CLI in a subprocess with HF_ENDPOINT pointing at the fake, as a user would: huggingface_hub
reads HF_ENDPOINT when it is imported. Nothing here reaches the real Hub.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from memdistill.cli import main
from tests.conftest import REPO_ROOT
from tests.fake_hub import FakeHub, Repo as HubRepo

CARD = "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: dataset.parquet\n---\n# A dataset\n\n![Entries kept per token](../plots/kept_per_token.svg)\n"


def make_project(root: Path, train_parts: int = 0, validation_parts: int | None = 0) -> Path:
    """data/README.md, data/dataset.parquet (a file, or a shard directory of `train_parts` parts),
    data/validation.parquet likewise (None: absent) and two plots; the parquet bytes are random (push only moves bytes)."""
    data, plots = root / "data", root / "plots"
    data.mkdir(parents=True)
    plots.mkdir()
    (data / "README.md").write_text(CARD, encoding="utf-8")
    for name, parts in (("dataset.parquet", train_parts), ("validation.parquet", validation_parts)):
        if parts is None:
            continue
        if parts == 0:
            (data / name).write_bytes(os.urandom(3000))
            continue
        (data / name).mkdir()
        for index in range(parts):
            (data / name / f"part-{index:05d}.parquet").write_bytes(os.urandom(1000 + index))
    (data / "dataset.rejects.jsonl").write_text("{}\n")  # beside the data, not part of it
    for name in ("kept_per_token", "mass_curve_size"):
        (plots / f"{name}.svg").write_text(f"<svg>{name}</svg>\n", encoding="utf-8")
    return root


def expected_files(root: Path) -> dict[str, bytes]:
    """What the repo should hold: the data folder at its root, the plots under plots/."""
    data = root / "data"
    # The card sits beside plots/ on the Hub, so its plot links lose the local "../".
    files = {"README.md": (data / "README.md").read_bytes().replace(b"](../plots/", b"](plots/")}
    for split in ("dataset.parquet", "validation.parquet"):
        path = data / split
        if path.is_file():
            files[split] = path.read_bytes()
        elif path.is_dir():
            files.update({f"{split}/{part.name}": part.read_bytes() for part in path.iterdir()})
    files.update({f"plots/{svg.name}": svg.read_bytes() for svg in (root / "plots").iterdir()})
    return files


def run_push(
    root: Path, hub: FakeHub, token: str | None, *flags: str, xet: bool = False, verbose: bool = False
) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(
        HF_ENDPOINT=hub.endpoint, HF_HOME=str(root / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1", PYTHONPATH=str(REPO_ROOT),
    )
    if not xet:
        env["HF_HUB_DISABLE_XET"] = "1"  # LFS over HTTP: the fake does not speak the Xet storage protocol
    if token is not None:
        env["HF_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "memdistill.cli", *(["--verbose"] if verbose else []), "push", *flags], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )


def assert_token_nowhere(token: str, root: Path, *outputs: str) -> None:
    for text in outputs:
        assert token not in text
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert token.encode() not in path.read_bytes(), path


def error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("memdistill push: error:")]


@pytest.fixture
def token() -> str:
    return f"hf_{secrets.token_hex(16)}"


def test_a_push_sends_every_file_byte_for_byte_and_the_token_only_to_the_hub_api(tmp_path: Path, token: str) -> None:
    root = make_project(tmp_path / "project")
    with FakeHub() as hub:
        done = run_push(root, hub, token, "--repo-id", "memlab/agent-distill", "--private")
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().startswith(f"{hub.endpoint}/datasets/memlab/agent-distill/commit/")
        repo = hub.repos["memlab/agent-distill"]
        assert repo.private
        assert hub.files("memlab/agent-distill") == {".gitattributes": b"*.parquet filter=lfs\n", **expected_files(root)}
        assert len(repo.commits) == 1 and repo.commits[0]["summary"].startswith("memdistill ")

        commit = next(r for r in hub.requests if r.path.endswith("/commit/main"))
        entries = {json.loads(line)["value"].get("path"): json.loads(line) for line in commit.body.splitlines()[1:]}
        for name in ("dataset.parquet", "validation.parquet"):  # large files travel over LFS: batch, then PUT
            local = (root / "data" / name).read_bytes()
            assert entries[name]["key"] == "lfsFile"
            assert entries[name]["value"]["oid"] == hashlib.sha256(local).hexdigest()
            assert entries[name]["value"]["size"] == len(local)
            assert hub.lfs[hashlib.sha256(local).hexdigest()] == local
        assert entries["README.md"]["key"] == entries["plots/kept_per_token.svg"]["key"] == "file"

    hub_calls = [r for r in hub.requests if not r.path.startswith("/lfs/")]
    assert {r.path for r in hub_calls} >= {"/api/repos/create", "/api/datasets/memlab/agent-distill/preupload/main",
                                          "/datasets/memlab/agent-distill.git/info/lfs/objects/batch"}
    assert all(r.headers.get("authorization") == f"Bearer {token}" for r in hub_calls)
    uploads = [r for r in hub.requests if r.path.startswith("/lfs/")]
    assert len(uploads) == 2 and not any("authorization" in r.headers for r in uploads)  # storage URLs never see it
    assert not (root / "hf-home" / "token").exists()
    assert_token_nowhere(token, tmp_path, done.stdout, done.stderr)


def test_shard_directories_go_through_the_streamed_upload_and_stale_files_are_deleted(tmp_path: Path, token: str) -> None:
    """With hf_xet installed (the default), upload_folder is the streamed multi-commit upload (what
    upload_large_folder was). The fake marks every file `regular`, so no byte needs the Xet protocol."""
    if importlib.util.find_spec("hf_xet") is None:
        pytest.skip("hf_xet is not installed: upload_folder makes one commit (the other test covers that)")
    # 268 files: more than the 250 huggingface_hub puts in its first commit, so the upload takes two.
    root = make_project(tmp_path / "project", train_parts=255, validation_parts=10)
    with FakeHub(lfs_suffixes=()) as hub:
        # An earlier, larger version left shards and a plot this one does not have; notes.txt is not push's.
        hub.repos["memlab/big"] = HubRepo(private=False)
        hub.files("memlab/big").update({"dataset.parquet/part-00999.parquet": b"old", "plots/old.svg": b"old", "notes.txt": b"mine"})
        done = run_push(root, hub, token, "--repo-id", "memlab/big", xet=True)
        assert done.returncode == 0, done.stderr
        assert hub.files("memlab/big") == {".gitattributes": b"*.parquet filter=lfs\n", "notes.txt": b"mine", **expected_files(root)}
        commits = hub.repos["memlab/big"].commits
        assert len(commits) == 2 and commits[1]["summary"] == commits[0]["summary"] + " (part 2)"
    assert_token_nowhere(token, tmp_path, done.stdout, done.stderr)


def test_a_refused_push_shows_no_token_even_with_debug_logging(tmp_path: Path, token: str) -> None:
    """--verbose: every library's debug log and the traceback, while the server echoes the token in its error."""
    root = make_project(tmp_path / "project")
    with FakeHub() as hub:
        hub.fault = 400
        done = run_push(root, hub, token, "--repo-id", "memlab/denied", verbose=True)
    assert done.returncode != 0 and "refused the request made with 'Bearer ***'" in done.stderr
    assert_token_nowhere(token, tmp_path, done.stdout, done.stderr)


# ------------------------------------------------------------- in this process: huggingface_hub's endpoint patched


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, token: str, caplog: pytest.LogCaptureFixture) -> Iterator[FakeHub]:
    """A fake Hub this process's huggingface_hub talks to (HF_ENDPOINT was read at import), over LFS."""
    import huggingface_hub.constants

    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("HF_TOKEN", token)
    with FakeHub() as fake:
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", fake.endpoint)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
        yield fake


def push_in_process(root: Path, *flags: str) -> int:
    return main(["push", "--data-dir", str(root / "data"), "--plots-dir", str(root / "plots"), *flags])


def test_a_push_to_a_branch_creates_it_and_leaves_main_alone(tmp_path: Path, hub: FakeHub) -> None:
    root = make_project(tmp_path)
    assert push_in_process(root, "--repo-id", "memlab/branchy", "--revision", "v2") == 0
    assert hub.files("memlab/branchy", "v2") == {".gitattributes": b"*.parquet filter=lfs\n", **expected_files(root)}
    assert hub.files("memlab/branchy") == {".gitattributes": b"*.parquet filter=lfs\n"}


def test_validation_split_is_optional_and_a_removed_one_is_deleted(tmp_path: Path, hub: FakeHub) -> None:
    root = make_project(tmp_path, validation_parts=None)
    hub.repos["memlab/small"] = HubRepo(private=False)
    hub.files("memlab/small")["validation.parquet"] = b"from a run that had a split"
    assert push_in_process(root, "--repo-id", "memlab/small") == 0
    assert hub.files("memlab/small") == {".gitattributes": b"*.parquet filter=lfs\n", **expected_files(root)}


@pytest.mark.parametrize(
    ("status", "says"),
    [
        (401, "the Hub refused HF_TOKEN (401 Unauthorized)"),
        (403, "HF_TOKEN may not write to memlab/denied (403 Forbidden)"),
        (404, "memlab/denied not found on the Hub (404 Not Found)"),
        (400, "the Hub answered 400: refused the request made with 'Bearer ***'"),
    ],
)
def test_a_refused_push_is_one_line_without_the_token(
    tmp_path: Path, hub: FakeHub, token: str, status: int, says: str, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """The fake echoes the Authorization header in its error body; the line masks it."""
    hub.fault = status
    assert push_in_process(make_project(tmp_path), "--repo-id", "memlab/denied") == 2
    captured = capsys.readouterr()
    lines = error_lines(captured.err)
    assert len(lines) == 1 and says in lines[0], captured.err
    assert_token_nowhere(token, tmp_path, captured.out, captured.err, caplog.text)


def test_a_card_the_hub_refuses_is_one_line(tmp_path: Path, hub: FakeHub, capsys: pytest.CaptureFixture[str]) -> None:
    hub.card_errors = ["\"configs[0].data_files\" must be an array"]
    assert push_in_process(make_project(tmp_path), "--repo-id", "memlab/cardless") == 2
    assert error_lines(capsys.readouterr().err) == [
        f'memdistill push: error: {tmp_path / "data" / "README.md"}: the Hub refuses the card\'s metadata: Invalid metadata in README.md. - "configs[0].data_files" must be an array'
    ]
    assert not any("/commit/" in r.path for r in hub.requests)


def test_an_existing_public_repo_is_not_pushed_to_with_private(tmp_path: Path, hub: FakeHub, capsys: pytest.CaptureFixture[str]) -> None:
    hub.repos["memlab/open"] = HubRepo(private=False)
    assert push_in_process(make_project(tmp_path), "--repo-id", "memlab/open", "--private") == 2
    assert "memlab/open exists and is public" in error_lines(capsys.readouterr().err)[0]
    assert not any("/commit/" in r.path or "/preupload/" in r.path for r in hub.requests)


def test_an_unreachable_hub_is_one_line(tmp_path: Path, hub: FakeHub, capsys: pytest.CaptureFixture[str]) -> None:
    hub.__exit__()  # stopped: its port now refuses connections
    assert push_in_process(make_project(tmp_path), "--repo-id", "memlab/gone") == 2
    assert f"cannot reach the Hub at {hub.endpoint}" in error_lines(capsys.readouterr().err)[0]


# ------------------------------------------------------------------------------ refused before any upload


def test_dry_run_lists_each_path_in_the_repo_with_its_size_and_needs_no_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    root = make_project(tmp_path, train_parts=2)
    assert push_in_process(root, "--repo-id", "memlab/x", "--dry-run") == 0
    lines = capsys.readouterr().out.splitlines()
    listed = {line.split()[1]: int(line.split()[0].replace(",", "")) for line in lines[1:] if "<-" in line}
    assert listed == {path: len(data) for path, data in expected_files(root).items()}
    assert lines[0].startswith(f"would push {len(listed)} files (") and "datasets/memlab/x (main)" in lines[0]


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--repo-id", "memlab/x"], "HF_TOKEN is not set"),
        (["--repo-id", "no-namespace", "--dry-run"], "--repo-id: expected ORG/NAME"),
        (["--repo-id", "memlab/bad--name", "--dry-run"], "--repo-id: 'memlab/bad--name' is not a Hub repo id"),
        (["--repo-id", "memlab/x y", "--dry-run"], "--repo-id: 'memlab/x y' is not a Hub repo id"),
        (["--dry-run"], "--repo-id: expected ORG/NAME"),
    ],
)
def test_a_missing_token_or_a_bad_repo_id_is_one_line(
    flags: list[str], says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert push_in_process(make_project(tmp_path), *flags) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith(f"memdistill push: error: {says}"), lines


def test_the_repo_id_can_come_from_params_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_project(tmp_path)
    (tmp_path / "params.yaml").write_text("push:\n  repo_id: memlab/from-params\n  revision: v1\n", encoding="utf-8")
    assert push_in_process(root, "--params", str(tmp_path / "params.yaml"), "--dry-run") == 0
    assert "datasets/memlab/from-params (v1)" in capsys.readouterr().out


def test_a_push_without_a_card_says_to_run_the_pipeline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_project(tmp_path)
    (root / "data" / "README.md").unlink()
    assert push_in_process(root, "--repo-id", "memlab/x", "--dry-run") == 2
    assert error_lines(capsys.readouterr().err) == [
        f"memdistill push: error: {root / 'data' / 'README.md'}: no dataset card; run `dvc repro` (the stats stage writes it) before pushing"
    ]


def test_stale_dvc_outputs_are_refused_naming_their_stage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A DVC project whose one stage writes the card and the dataset: fresh after repro, stale once its input
    or its output changes (the check is `dvc status` on the stages making the pushed files, with their upstream)."""
    make = ("import pathlib; d = pathlib.Path('data'); d.mkdir(exist_ok=True); t = pathlib.Path('source.txt').read_text(); "
            "(d / 'README.md').write_text(t); (d / 'dataset.parquet').write_text(t * 100)")
    (tmp_path / "source.txt").write_text("one\n")
    stage = {"cmd": f"{sys.executable} -c \"{make}\"", "deps": ["source.txt"], "outs": ["data/README.md", "data/dataset.parquet"]}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"build": stage}}), encoding="utf-8")
    from dvc.repo import Repo

    with Repo.init(str(tmp_path), no_scm=True) as repo, contextlib.chdir(tmp_path):
        repo.reproduce()
    assert push_in_process(tmp_path, "--repo-id", "memlab/x", "--dry-run") == 0
    capsys.readouterr()

    (tmp_path / "source.txt").write_text("two\n")
    assert push_in_process(tmp_path, "--repo-id", "memlab/x", "--dry-run") == 2
    assert error_lines(capsys.readouterr().err) == [
        "memdistill push: error: the dataset is stale: dvc status lists build (changed deps); run `dvc repro` before pushing"
    ]
    (tmp_path / "source.txt").write_text("one\n")
    (tmp_path / "data" / "dataset.parquet").write_text("edited by hand")
    assert push_in_process(tmp_path, "--repo-id", "memlab/x", "--dry-run") == 2
    assert "build (changed outs)" in error_lines(capsys.readouterr().err)[0]
