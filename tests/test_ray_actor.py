"""The Ray generate actor's batch handling, without a cluster: a batch in, results out, and back."""

from __future__ import annotations

import numpy as np
import orjson

from memdistill.generate.ray import TeacherActor, decode_result, encode_result, in_prefix_order
from memdistill.generate.teachers.base import Failure, SamplingParams, TeacherRequest
from memdistill.generate.teachers.local import LocalTeacher
from tests.echo_teacher import EchoTeacher, echo_completion


def test_the_actor_answers_a_batch_and_results_survive_the_trip_to_the_driver() -> None:
    requests = [TeacherRequest(i, [{"role": "user", "content": f"q{i}"}]) for i in (3, 8)]
    actor = TeacherActor(EchoTeacher)
    batch = {"sample_idx": np.array([r.sample_idx for r in requests]),
             "messages": np.array([orjson.dumps(r.messages) for r in requests], dtype=object)}
    out = actor(batch)
    again = actor(batch)  # the actor keeps its teacher and its event loop across batches
    assert out["sample_idx"] == [3, 8] and again["sample_idx"] == [3, 8]
    assert [decode_result(raw) for raw in out["result"]] == [echo_completion(r) for r in requests]
    actor.loop.close()
    failure = Failure(5, "timed out", 3)
    assert decode_result(encode_result(failure)) == failure


class PlannedLocalTeacher(LocalTeacher):
    """The local teacher with its model replaced: the prefix planner's batches are recorded and echoed."""

    planned: list[list[int]] = []

    def __init__(self) -> None:
        super().__init__("smollm2-135m-instruct", SamplingParams(), batch_size=8)

    def _load(self) -> None:
        pass

    def _encode(self, requests):  # type: ignore[no-untyped-def]
        return [[1, 2, r.sample_idx] for r in requests]

    def _planned_batches(self, requests, prompts):  # type: ignore[no-untyped-def]
        PlannedLocalTeacher.planned.append([r.sample_idx for r in requests])
        yield list(range(len(requests))), [echo_completion(r) for r in requests]

    def generate_batch(self, requests):  # type: ignore[no-untyped-def]
        raise AssertionError("the actor must answer through the prefix-reusing path, not generate_batch()")


def test_the_actor_runs_the_local_teacher_through_its_prefix_reusing_path() -> None:
    requests = [TeacherRequest(i, [{"role": "user", "content": f"q{i}"}]) for i in (1, 2)]
    actor = TeacherActor(PlannedLocalTeacher)
    batch = {"sample_idx": np.array([r.sample_idx for r in requests]),
             "messages": np.array([orjson.dumps(r.messages) for r in requests], dtype=object)}
    out = actor(batch)
    actor.loop.close()
    assert PlannedLocalTeacher.planned == [[1, 2]]
    assert [decode_result(raw) for raw in out["result"]] == [echo_completion(r) for r in requests]


def test_requests_sharing_a_prefix_are_sent_next_to_each_other() -> None:
    memory_a = {"role": "system", "content": "memory A"}
    memory_b = {"role": "system", "content": "memory B"}
    requests = [TeacherRequest(0, [memory_a, {"role": "user", "content": "x"}]),
                TeacherRequest(1, [memory_b, {"role": "user", "content": "x"}]),
                TeacherRequest(2, [memory_a, {"role": "user", "content": "y"}]),
                TeacherRequest(3, [memory_b, {"role": "user", "content": "y"}])]
    ordered = [r.sample_idx for r in in_prefix_order(requests)]
    assert ordered == [0, 2, 1, 3]
