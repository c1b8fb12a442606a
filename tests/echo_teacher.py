"""A deterministic teacher without a model, importable by Ray workers: answers derive from the prompt."""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from memdistill.generate.teachers.base import Completion, Failure, TeacherRequest


def echo_completion(request: TeacherRequest) -> Completion:
    seed = zlib.crc32(request.messages[-1]["content"].encode())
    ids = [(seed >> shift) % 1000 + 3 for shift in (0, 5, 10)]
    items = [
        {"token": f"t{i}", "logprob": math.log(0.6), "token_id": i,
         "top_logprobs": [{"token": f"t{i}", "logprob": math.log(0.6), "token_id": i},
                          {"token": f"t{i + 1}", "logprob": math.log(0.3), "token_id": i + 1}]}
        for i in ids
    ]
    return Completion(request.sample_idx, "".join(f"t{i}" for i in ids), ids, items, "length", 10, len(ids), 0.001)


class EchoTeacher:
    """Answers every request at once. With `die_on_batch` and `marker`, the first process to reach that
    batch creates the marker and dies (os._exit, like a killed node); later processes carry on."""

    def __init__(self, die_on_batch: int | None = None, marker: Path | None = None) -> None:
        self.die_on_batch = die_on_batch
        self.marker = marker
        self.batches = 0
        self.pids: set[int] = set()

    def describe(self) -> dict[str, Any]:
        return {"backend": "echo", "flavor": None, "model": "echo", "base_url": None, "max_tokens": 3,
                "temperature": 0.0, "top_p": 1.0, "top_logprobs": 2, "seed": 0}

    async def stream(self, requests: Sequence[TeacherRequest]) -> AsyncIterator[Completion | Failure]:
        self.batches += 1
        if self.die_on_batch == self.batches and self.marker is not None:
            try:
                fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                os._exit(1)
        for request in requests:
            yield echo_completion(request)

    async def aclose(self) -> None:
        return None
