"""A content-addressed, append-only store of teacher responses: the request cache and the resume journal.

Every completed response is appended as one line and fsync'd before it counts as done, so a run killed
at any moment (kill -9 included) loses at most the requests in flight. A torn last line is ignored.
The key covers everything that changes the answer, so a hit is exactly the response that request
would get again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from memdistill.teachers.base import Completion

log = logging.getLogger(__name__)

STORE_FILE = "responses.jsonl"


def request_key(teacher: dict[str, Any], messages: list[dict[str, str]]) -> str:
    """sha256 over the teacher identity, every sampling param and the rendered messages."""
    identity = {key: value for key, value in teacher.items() if key not in {"base_url", "batch_size", "concurrency"}}
    payload = json.dumps({"teacher": identity, "messages": messages}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class ResponseStore:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / STORE_FILE
        self._index: dict[str, Completion] = {}
        self._handle: int | None = None

    def open(self) -> "ResponseStore":
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self._load()
        self._handle = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        return self

    def _load(self) -> None:
        torn = 0
        with open(self.path, "rb") as handle:
            for raw in handle:
                if not raw.endswith(b"\n"):
                    torn += 1  # a write cut short by a crash; the request simply runs again
                    continue
                try:
                    record = json.loads(raw)
                    self._index[record["key"]] = Completion(**record["completion"])
                except (ValueError, KeyError, TypeError):
                    torn += 1
        if torn:
            log.warning("%s: ignored %d incomplete line(s) left by an interrupted run", self.path, torn)

    def get(self, key: str) -> Completion | None:
        return self._index.get(key)

    def put(self, key: str, completion: Completion) -> None:
        assert self._handle is not None, "open() the store first"
        line = json.dumps({"key": key, "completion": asdict(completion)}, ensure_ascii=False) + "\n"
        os.write(self._handle, line.encode("utf-8"))
        os.fsync(self._handle)
        self._index[key] = completion

    def close(self) -> None:
        if self._handle is not None:
            os.close(self._handle)
            self._handle = None

    def __len__(self) -> int:
        return len(self._index)
