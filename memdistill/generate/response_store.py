"""A content-addressed, append-only store of teacher responses: the request cache and the resume journal.

Every completed response is appended as one line the moment it arrives. The line reaches the kernel at
once (`os.write`), so a killed process (kill -9 included) loses at most the requests still in flight;
a background thread fsyncs the file behind the writes (group commit: one fsync covers every line written
since the last), so an OS crash or power cut loses at most the last moments, without an fsync stalling
the event loop for every response. `close()` waits for the final fsync. A torn last line is ignored.

The key covers everything that changes the answer (backend, flavor, model, every sampling param, seed,
rendered messages), so a hit is exactly the response that request would get again. Lines also carry the
id of the run that wrote them, and a finished run appends a `run_done` line: this is what lets a
`--no-cache` run, killed and started again, resume its own work without reusing older responses.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from dataclasses import fields
from pathlib import Path
from typing import Any

from memdistill.core import fileio
from memdistill.generate.teachers.base import Completion

log = logging.getLogger(__name__)

STORE_FILE = "responses.jsonl"
# What identifies a teacher's answer; servers, batch sizes, concurrency and timeouts do not change it.
COMPLETION_FIELDS = tuple(f.name for f in fields(Completion))
IDENTITY_FIELDS = ("backend", "flavor", "model", "max_tokens", "temperature", "top_p", "top_logprobs", "seed")


def request_key(teacher: dict[str, Any], messages: list[dict[str, str]]) -> str:
    """sha256 over the teacher identity, every sampling param and the rendered messages."""
    identity = {key: teacher.get(key) for key in IDENTITY_FIELDS}
    payload = json.dumps({"teacher": identity, "messages": messages}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def run_id(output: Path, keys: list[str]) -> str:
    """Same output and same requests: the same run, so a re-run after a crash continues it."""
    digest = hashlib.sha256(str(output.resolve()).encode("utf-8"))
    for key in sorted(keys):
        digest.update(key.encode("ascii"))
    return digest.hexdigest()[:32]


class _Syncer:
    """fsyncs a file descriptor in the background whenever asked; one fsync covers all earlier writes."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._wanted = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="response-store-fsync", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            os.fsync(self.fd)
            if self._stop:
                return

    def request(self) -> None:
        self._wanted.set()

    def close(self) -> None:
        self._stop = True
        self._wanted.set()
        self._thread.join()
        os.fsync(self.fd)  # lines written while the thread's last fsync was running


class ResponseStore:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / STORE_FILE
        self._index: dict[str, Completion] = {}
        self._runs: dict[str, set[str]] = {}
        self._handle: int | None = None
        self._syncer: _Syncer | None = None

    def open(self) -> "ResponseStore":
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self._load()
        self._handle = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)  # the umask decides, as for any file
        self._syncer = _Syncer(self._handle)
        return self

    def _load(self) -> None:
        torn = 0
        complete_bytes = 0
        with open(self.path, "rb") as handle:
            for raw in handle:
                if not raw.endswith(b"\n"):
                    torn += 1  # a write cut short by a crash; the request simply runs again
                    continue
                complete_bytes += len(raw)
                try:
                    record = json.loads(raw)
                    if "run_done" in record:
                        self._runs.pop(record["run_done"], None)
                        continue
                    self._index[record["key"]] = Completion(**record["completion"])
                    if record.get("run"):
                        self._runs.setdefault(record["run"], set()).add(record["key"])
                except (ValueError, KeyError, TypeError):
                    torn += 1
        if torn:
            log.warning("%s: ignored %d incomplete line(s) left by an interrupted run", self.path, torn)
        if complete_bytes < self.path.stat().st_size:
            # Cut the torn tail off, or the next appended line would be glued to it and lost as well.
            os.truncate(self.path, complete_bytes)

    def get(self, key: str) -> Completion | None:
        return self._index.get(key)

    def completed_by_run(self, run: str) -> set[str]:
        """Keys an unfinished run with this id already completed (empty once the run finished)."""
        return set(self._runs.get(run, ()))

    def _append(self, record: dict[str, Any]) -> None:
        assert self._handle is not None and self._syncer is not None, "open() the store first"
        line = fileio.dump_json_line(record)
        # One write call per line with O_APPEND: lines never interleave, and a crash tears at most the last.
        os.write(self._handle, line.encode("utf-8"))
        self._syncer.request()

    def put(self, key: str, completion: Completion, run: str | None = None) -> None:
        # A shallow dict: dataclasses.asdict deep-copies every logprob entry, which cost more than the request.
        record = {name: getattr(completion, name) for name in COMPLETION_FIELDS}
        self._append({"key": key, "run": run, "completion": record})
        self._index[key] = completion
        if run:
            self._runs.setdefault(run, set()).add(key)

    def finish_run(self, run: str) -> None:
        self._append({"run_done": run})
        self._runs.pop(run, None)

    def close(self) -> None:
        if self._syncer is not None:
            self._syncer.close()
            self._syncer = None
        if self._handle is not None:
            os.close(self._handle)
            self._handle = None

    def __len__(self) -> int:
        return len(self._index)
