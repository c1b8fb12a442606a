"""Generate on Ray: the pending prompts become a Ray Dataset, a pool of actors each holding a teacher
answers them, and the driver receives every completion as it arrives.

`RayTeacherPool` is a `Teacher` like any other, so `generate_dataset` is unchanged: the driver computes
the request keys, skips what the response store already holds, appends every completion to the store
the moment it arrives (a killed job resumes without asking again), and writes the outputs. Only the
driver touches the store and the outputs, so workers on other nodes need no shared path for them.

An actor that dies mid-batch is restarted by Ray and the batch is run again (Ray Data's actor pools
default to unlimited restarts and task retries; the Ray test kills one to check); Ray Data hands each
finished batch to the driver once, and the driver keys every response by its request, so nothing is
recorded twice and nothing is lost.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import orjson

from memdistill.generate.teachers.base import Completion, Failure, Teacher, TeacherRequest

log = logging.getLogger(__name__)

# Above this many prompts, blocks hold several batches (Ray's per-block bookkeeping stays small).
MAX_BLOCKS = 10_000

def encode_result(result: Completion | Failure) -> bytes:
    """One result as JSON bytes: Ray Data moves it as a plain binary column, whatever its nesting."""
    kind = "failure" if isinstance(result, Failure) else "completion"
    return orjson.dumps({"kind": kind, **dataclasses.asdict(result)})


def decode_result(raw: bytes) -> Completion | Failure:
    record = orjson.loads(raw)
    kind = record.pop("kind")
    return Failure(**record) if kind == "failure" else Completion(**record)


def in_prefix_order(requests: Sequence[TeacherRequest]) -> list[TeacherRequest]:
    """The requests sorted by their messages, so prompts sharing a prefix (system prompt, memory view)
    land in the same batch, where the local teacher computes the shared prefix once (its `stream`)."""
    return sorted(requests, key=lambda r: (orjson.dumps(r.messages), r.sample_idx))


class TeacherActor:
    """Ray Data's callable class: one teacher per actor, kept for every batch the actor gets.

    A batch goes through the teacher's `stream`, the path that reuses shared prompt prefixes for the
    local teacher (`generate_reusing_prefixes`), never through the plain `generate_batch`.
    """

    def __init__(self, make_teacher: Callable[[], Teacher]) -> None:
        self.teacher = make_teacher()
        # One loop for the actor's life: an async client stays bound to the loop it was made on.
        self.loop = asyncio.new_event_loop()

    async def _answer(self, requests: list[TeacherRequest]) -> list[Completion | Failure]:
        return [result async for result in self.teacher.stream(requests)]

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        requests = [
            TeacherRequest(int(index), orjson.loads(messages))
            for index, messages in zip(batch["sample_idx"], batch["messages"])
        ]
        results = self.loop.run_until_complete(self._answer(requests))
        return {"sample_idx": [r.sample_idx for r in results], "result": [encode_result(r) for r in results]}


class RayTeacherPool:
    """A `Teacher` whose requests are answered by `num_workers` actors of a Ray cluster.

    `describe()` is the wrapped teacher's, so request keys (and so the response store) are the same
    as a local run's: a job can start locally and finish on Ray, or the other way round.
    """

    def __init__(
        self,
        make_teacher: Callable[[], Teacher],
        description: dict[str, Any],
        num_workers: int,
        batch_size: int,
        ray_address: str | None = None,
        num_cpus_per_worker: float = 1.0,
        num_gpus_per_worker: float = 0.0,
    ) -> None:
        self.make_teacher = make_teacher
        self.description = description
        self.num_workers = num_workers
        self.batch_size = batch_size
        self.ray_address = ray_address
        self.num_cpus_per_worker = num_cpus_per_worker
        self.num_gpus_per_worker = num_gpus_per_worker
        self._running: Any = None

    def describe(self) -> dict[str, Any]:
        return self.description

    def _results(self, requests: Sequence[TeacherRequest]) -> Any:
        from memdistill.core.ray_runtime import ray_session

        with ray_session(self.ray_address, self.num_workers) as ray:
            ray.data.DataContext.get_current().enable_progress_bars = False  # the driver's own bar counts
            # Results are keyed by sample_idx, so the order sent is free: grouping shared prefixes lets each
            # batch reuse them. Ray Data keeps block order, so neighbours stay in one batch.
            items = [{"sample_idx": r.sample_idx, "messages": orjson.dumps(r.messages)} for r in in_prefix_order(requests)]
            # A block's answers reach the driver (and the store) when its task ends, so blocks are kept
            # to about one batch: a killed job loses only the blocks in flight.
            blocks = max(self.num_workers, min(MAX_BLOCKS, math.ceil(len(items) / self.batch_size)))
            dataset = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), blocks)))
            answered = dataset.map_batches(
                TeacherActor,
                fn_constructor_args=(self.make_teacher,),
                batch_size=self.batch_size,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=self.num_workers),
                num_cpus=self.num_cpus_per_worker,
                num_gpus=self.num_gpus_per_worker or None,
            )
            for batch in answered.iter_batches(batch_size=None, batch_format="numpy"):
                for raw in batch["result"]:
                    yield decode_result(bytes(raw))

    async def stream(self, requests: Sequence[TeacherRequest]) -> AsyncIterator[Completion | Failure]:
        results = self._running = self._results(requests)
        done = object()
        while (result := await asyncio.to_thread(next, results, done)) is not done:
            yield result

    async def aclose(self) -> None:
        # An abandoned run (an error upstream) still stops its actors and a Ray instance it started.
        if self._running is not None:
            await asyncio.to_thread(self._running.close)
            self._running = None
