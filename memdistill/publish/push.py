"""`memdistill push`: the dataset folder to a Hugging Face dataset repo.

What goes, in the repo's layout: the data folder sits at the repo's root, so `load_dataset("ORG/NAME")` reads
what `load_dataset("data")` reads here, and the card's `configs` paths hold in both places:

    README.md                 <- data/README.md (the dataset card stats writes)
    dataset.parquet           <- data/dataset.parquet, or dataset.parquet/part-*.parquet for a shard directory
    validation.parquet        <- data/validation.parquet (the same; absent when the split is off)
    plots/*.svg               <- plots/*.svg

Files under those names that the repo holds and this push does not (shards of a larger earlier version, a
validation split since turned off) are deleted in the same commit, so the repo never mixes two versions;
anything else in the repo is left alone.

The upload is huggingface_hub's `upload_folder` on a staging folder of links to those files: with hf_xet
(installed with huggingface_hub) it streams a large folder in several commits and resumes when run again
(what `upload_large_folder` did before huggingface_hub 2); without hf_xet it is one commit over the LFS
protocol.

The token comes from HF_TOKEN only. It is handed to huggingface_hub and nowhere else: never logged, never
written, and masked in any message the Hub sends back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, field_validator

from memdistill import __version__
from memdistill.core import params, shards
from memdistill.core.errors import UserError

log = logging.getLogger(__name__)

TOKEN_ENV = "HF_TOKEN"
CARD = "README.md"
SPLITS = ("dataset.parquet", "validation.parquet")
PLOTS_IN_REPO = "plots"
# What a push owns in the repo besides the card: a remote file matching these and absent from the push is deleted.
OWNED_PATTERNS = [*(f"{name}{tail}" for name in SPLITS for tail in ("", "/*")), f"{PLOTS_IN_REPO}/*.svg"]


class PushConfig(params.StageParams):
    section: ClassVar[str] = "push"

    repo_id: str | None = Field(None, description="the Hub dataset repo to push to, ORG/NAME (created when missing)")
    private: bool = Field(False, description="create the repo private; a push to an existing public repo is then refused")
    revision: str | None = Field(None, description="branch to push to, created from main when missing (null = main)")

    @field_validator("repo_id")
    @classmethod
    def _hub_repo_id(cls, value: str | None) -> str | None:
        if value is not None:
            check_repo_id(value)
        return value


def check_repo_id(repo_id: str) -> None:
    """ORG/NAME as the Hub accepts it (huggingface_hub's own rules); a ValueError says what is wrong."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if repo_id.count("/") != 1:
        raise ValueError(f"expected ORG/NAME (a namespace, a slash and the dataset's name), got {repo_id!r}")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise ValueError(f"{repo_id!r} is not a Hub repo id: {str(exc).split(': ')[0]}") from None


@dataclass(frozen=True, slots=True)
class PushFile:
    local: Path
    path_in_repo: str
    size: int


def plan_files(data_dir: Path, plots_dir: Path | None) -> list[PushFile]:
    """What a push sends: the card, both splits (files or shard directories) and the plots."""
    card = data_dir / CARD
    if not card.is_file():
        raise UserError(f"{card}: no dataset card; run `dvc repro` (the stats stage writes it) before pushing")
    train = data_dir / SPLITS[0]
    if not train.exists():
        raise UserError(f"{train}: not found; run `dvc repro` before pushing")
    files = [PushFile(card, CARD, card.stat().st_size)]
    for name in SPLITS:
        split = data_dir / name
        if not split.exists():
            continue  # validation.parquet is absent when convert.validation_fraction is 0
        prefix = f"{name}/" if split.is_dir() else ""
        files += [PushFile(part, prefix + (part.name if prefix else name), part.stat().st_size) for part in shards.part_files(split)]
    if plots_dir is not None and plots_dir.is_dir():
        files += [PushFile(svg, f"{PLOTS_IN_REPO}/{svg.name}", svg.stat().st_size) for svg in sorted(plots_dir.glob("*.svg"))]
    files[0] = PushFile(card, CARD, len(card_for_hub(card, files).encode("utf-8")))  # the card as it goes
    return files


def human_size(size: int) -> str:
    """412.3 kB, 1.2 GB (decimal units, as the Hub shows sizes)."""
    if size < 1000:
        return f"{size} B"
    scaled, unit = float(size), "B"
    for unit in ("kB", "MB", "GB", "TB"):
        scaled /= 1000
        if scaled < 1000:
            break
    return f"{scaled:.1f} {unit}"


def render_plan(files: list[PushFile], repo_id: str, revision: str | None) -> str:
    """The dry run's listing: each path in the repo with its exact size in bytes and where it comes from."""
    total = sum(f.size for f in files)
    width = max(len(f.path_in_repo) for f in files)
    lines = [f"would push {len(files)} files ({human_size(total)}) to datasets/{repo_id} ({revision or 'main'}):"]
    lines += [f"  {f.size:>12,}  {f.path_in_repo:<{width}}  <- {f.local}" for f in files]
    lines.append(f"and files already in the repo under {', '.join(OWNED_PATTERNS)} but not listed here would be deleted")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- freshness


def check_fresh(files: list[PushFile]) -> str | None:
    """Refuse files that DVC says are stale; returns the project's git revision (None outside git or DVC).

    The stages checked are those whose outputs the push sends, with everything upstream of them
    (`dvc status --with-deps` on those stages): a changed dependency, parameter or output anywhere
    there means the files are not what the pipeline now makes. DVC's hashes of unchanged files come
    from its state database, so the check costs little once `dvc repro` ran. Files outside a DVC project,
    or not outputs of any stage, cannot be checked: the push goes ahead and says so.
    """
    folder = files[0].local.resolve().parent
    # A DVC project is a folder holding .dvc/ (what `Repo.find_root` looks for); found without importing DVC.
    root = next((str(parent) for parent in (folder, *folder.parents) if (parent / ".dvc").is_dir()), None)
    if root is None:
        log.warning("%s is not inside a DVC project: not checked for stale outputs", folder)
        return None
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        # DVC names stages relative to the working directory: from the root, `convert` rather than ../dvc.yaml:convert.
        with contextlib.chdir(root), Repo(root) as repo:
            stages = _stages_making(repo, [f.local.resolve() for f in files])
            if not stages:
                log.warning("no DVC stage makes the pushed files: not checked for stale outputs")
                return _git_revision(repo)
            changed = repo.status(targets=sorted(stages), with_deps=True)
            if changed:
                listed = "; ".join(f"{stage} ({_change_kinds(changes)})" for stage, changes in changed.items())
                raise UserError(f"the dataset is stale: dvc status lists {listed}; run `dvc repro` before pushing")
            return _git_revision(repo)
    except DvcException as exc:
        raise UserError(f"{root}: dvc status failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def _stages_making(repo: Any, paths: list[Path]) -> set[str]:
    """Names of the stages with an output that is, or holds, one of `paths`."""
    names = set()
    for out in repo.index.outs:
        target = Path(out.fs_path).resolve()
        if any(path == target or target in path.parents for path in paths):
            names.add(out.stage.addressing)
    return names


def _change_kinds(changes: list[Any]) -> str:
    """'changed deps, changed outs' from a stage's dvc status entries."""
    kinds: list[str] = []
    for change in changes:
        for kind in change if isinstance(change, dict) else [change]:
            if kind not in kinds:
                kinds.append(str(kind))
    return ", ".join(kinds)


def _git_revision(repo: Any) -> str | None:
    try:
        revision = repo.scm.get_rev()
        return f"{revision[:12]}{' with uncommitted changes' if repo.scm.is_dirty() else ''}"
    except Exception:  # a DVC project without git (`dvc init --no-scm`), or a repo without commits
        return None


# ---------------------------------------------------------------------------------------------- upload


def read_token() -> str:
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise UserError(
            f"{TOKEN_ENV} is not set: export a Hugging Face token with write access (memdistill reads it from the environment only)"
        )
    return token


@contextlib.contextmanager
def staged(files: list[PushFile]) -> Iterator[Path]:
    """A temporary folder in the repo's layout whose files are links to the pushed ones (nothing is copied)."""
    with tempfile.TemporaryDirectory(prefix="memdistill-push-") as folder:
        for f in files:
            link = Path(folder, f.path_in_repo)
            link.parent.mkdir(parents=True, exist_ok=True)
            if f.path_in_repo == CARD:
                link.write_text(card_for_hub(f.local, files), encoding="utf-8")
            else:
                link.symlink_to(f.local.resolve())
        yield Path(folder)


def card_for_hub(card: Path, files: list[PushFile]) -> str:
    """The card with its plot links pointing where the plots go in the repo: locally it sits in data/ and links
    ../plots/NAME.svg, on the Hub it is the repo's README.md beside plots/."""
    text = card.read_text(encoding="utf-8")
    for f in files:
        if f.path_in_repo.startswith(f"{PLOTS_IN_REPO}/"):
            local_link = Path(os.path.relpath(f.local.resolve(), card.resolve().parent)).as_posix()
            text = text.replace(f"]({local_link})", f"]({f.path_in_repo})")
    return text


def push(config: PushConfig, files: list[PushFile], token: str, git_revision: str | None) -> str:
    """Create the repo if needed, then upload `files` in one `upload_folder`; returns the commit's URL."""
    from huggingface_hub import HfApi

    assert config.repo_id is not None
    if not log.isEnabledFor(logging.DEBUG):
        logging.getLogger("httpx2").setLevel(logging.WARNING)  # one INFO line per request otherwise
    api = HfApi(token=token)
    message = f"memdistill {__version__} push" + (f" from git {git_revision}" if git_revision else "")
    try:
        with _hub_errors(config, token, api.endpoint, card=files[0].local):
            # private=None: a new repo gets its namespace's default visibility (an org may default to private).
            api.create_repo(config.repo_id, repo_type="dataset", private=True if config.private else None, exist_ok=True)
            if config.private and not api.dataset_info(config.repo_id).private:
                raise UserError(
                    f"{config.repo_id} exists and is public; --private does not change an existing repo "
                    "(make it private on the Hub first, or push to another repo id)"
                )
            if config.revision not in (None, "main"):
                api.create_branch(config.repo_id, branch=config.revision, repo_type="dataset", exist_ok=True)
            log.info("pushing %d files (%s) to %s/datasets/%s", len(files), human_size(sum(f.size for f in files)), api.endpoint, config.repo_id)
            with staged(files) as folder:
                commit = api.upload_folder(
                    repo_id=config.repo_id, repo_type="dataset", folder_path=folder, revision=config.revision,
                    commit_message=message, delete_patterns=OWNED_PATTERNS,
                )
    except UserError as exc:
        raise UserError(_masked(str(exc), token)) from None
    return str(commit.commit_url)


@contextlib.contextmanager
def _hub_errors(config: PushConfig, token: str, endpoint: str, card: Path) -> Iterator[None]:
    """The Hub's refusals as one line each (token masked); anything unknown keeps its traceback for --verbose."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        yield
    except UserError:
        raise
    except Exception as exc:
        if isinstance(exc, ValueError) and "README.md" in str(exc):  # the Hub's check of the card's YAML (a 400)
            reason = " ".join(str(exc).split())
            raise UserError(_masked(f"{card}: the Hub refuses the card's metadata: {reason}", token)) from None
        http = next((e for e in _causes(exc) if isinstance(e, HfHubHTTPError)), None)
        if http is not None:
            raise UserError(_masked(_http_line(http, config, endpoint), token)) from None
        transport = next((e for e in _causes(exc) if _is_transport_error(e)), None)
        if transport is not None:
            raise UserError(_masked(f"cannot reach the Hub at {endpoint}: {transport}", token)) from None
        raise


def _http_line(exc: Any, config: PushConfig, endpoint: str) -> str:
    status = exc.response.status_code if exc.response is not None else None
    repo = config.repo_id
    if status == 401:
        return f"the Hub refused {TOKEN_ENV} (401 Unauthorized): the token is invalid or expired; create one with write access at {endpoint}/settings/tokens"
    if status == 403:
        return f"{TOKEN_ENV} may not write to {repo} (403 Forbidden): use a token with write access to {str(repo).split('/')[0]}, or another repo id"
    if status == 404:
        branch = f" or branch {config.revision}" if config.revision else ""
        return f"{repo}{branch} not found on the Hub (404 Not Found): check --repo-id and that {TOKEN_ENV}'s owner can see it"
    reason = getattr(exc, "server_message", None) or str(exc).splitlines()[0]
    return f"the Hub answered {status}: {' '.join(str(reason).split())}"


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: BaseException | None = exc
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


def _is_transport_error(exc: BaseException) -> bool:
    """A connection that failed below HTTP: refused, reset, timed out (httpx2 is huggingface_hub's client)."""
    import httpx2

    return isinstance(exc, ConnectionError | TimeoutError | httpx2.TransportError)


def _masked(text: str, token: str) -> str:
    return text.replace(token, "***") if token else text
