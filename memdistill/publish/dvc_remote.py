"""`memdistill dvc-push`: a `dvc push` that an interrupted push cannot make skip files, then a check that every
object the workspace's outputs need is on the remote, uploading any that are not.

Why a plain `dvc push` is not enough after an interruption (DVC 3.67):
- DVC keeps, per repository, the list of objects a push collected (an index in its site cache folder) and reuses
  it on the next push. A push killed while it writes that list leaves it partial.
- The next `dvc push` then uploads only the objects on the partial list, uploads the directory's manifest (its
  `.dir` object) and reports success; `dvc status -c` agrees. Killed after 14 of 41 entries, the next push
  uploaded 13 files of 40 (`tests/reliability/test_environment_faults.py`).
- Once a manifest is on the remote, DVC takes all of that directory's files to be there, so no later push mends it.
  Only a `dvc pull` into another cache finds the files missing.

So this command drops those cached lists first (DVC then collects from `dvc.lock` and the `.dvc` files afresh; it
costs the collection, not the upload), pushes, and asks the remote for every object itself, with no index.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from memdistill.core.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PushReport:
    remote: str
    pushed: int  # objects `dvc push` uploaded
    checked: int  # objects the workspace's outputs need, each asked of the remote
    restored: int  # of those, missing on the remote after `dvc push` and uploaded here


def _open_repo() -> Any:
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        return Repo()
    except NotDvcRepoError as exc:
        raise UserError(f"not inside a DVC repository ({exc}); run it from the project root") from None


def push(remote: str | None = None, jobs: int | None = None) -> PushReport:
    from dvc.exceptions import DvcException

    with _open_repo() as repo:
        repo.drop_data_index()  # the cached lists of objects earlier (maybe interrupted) pushes collected
        try:
            pushed = repo.push(remote=remote, jobs=jobs)
            odb = repo.cloud.get_remote_odb(remote, "push")
            needed = {hash_info.value for objs in repo.used_objs(remote=remote).values() for hash_info in objs}
        except DvcException as exc:
            raise UserError(f"dvc push: {exc}") from None
        name = remote or repo.config["core"].get("remote") or "default"
        present = set(odb.oids_exist(needed, jobs=jobs))
        # Files before manifests: a manifest on the remote tells DVC its directory is complete.
        missing = sorted(needed - present, key=lambda oid: (oid.endswith(".dir"), oid))
        cache = repo.cache.local
        unavailable = [oid for oid in missing if not cache.exists(oid)]
        if unavailable:
            raise UserError(
                f"{len(unavailable)} object(s) the outputs need are neither on remote '{name}' nor in the local cache "
                f"(first: {unavailable[0]}); run `dvc repro` or `dvc pull` from a remote that has them, then push again"
            )
        if missing:
            log.warning("remote '%s' lacked %d object(s) after `dvc push` (an earlier push was interrupted); uploading them", name, len(missing))
            for oid in missing:  # one at a time, in order, so no manifest lands before its files
                odb.add(cache.oid_to_path(oid), cache.fs, oid)
            still = sorted(set(missing) - set(odb.oids_exist(missing, jobs=jobs)))
            if still:
                raise UserError(f"{len(still)} object(s) could not be uploaded to remote '{name}' (first: {still[0]})")
        return PushReport(remote=name, pushed=pushed, checked=len(needed), restored=len(missing))
