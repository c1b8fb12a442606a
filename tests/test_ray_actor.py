"""The Ray generate actor's batch handling, without a cluster: a batch in, results out, and back."""

from __future__ import annotations

import numpy as np
import orjson

from memdistill.executors.ray_generate import TeacherActor, decode_result, encode_result
from memdistill.teachers.base import Failure, TeacherRequest
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
