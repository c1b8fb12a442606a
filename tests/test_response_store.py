"""The response store: request keys, torn lines, run bookkeeping."""

from __future__ import annotations

from pathlib import Path

import pytest

from memdistill.generate.response_store import IDENTITY_FIELDS, STORE_FILE, ResponseStore, request_key, run_id
from memdistill.generate.teachers.base import Completion, SamplingParams

TEACHER = {"backend": "openai", "flavor": "vllm", "model": "m", "base_url": "http://a/v1", **SamplingParams().to_dict()}
MESSAGES = [{"role": "user", "content": "hi"}]


def completion(idx: int) -> Completion:
    return Completion(idx, f"text {idx}", [1, 2], [{"token": "a", "logprob": -0.5, "token_id": 1, "top_logprobs": []}],
                      "stop", 3, 2, 0.1, {"attempts": 1})


@pytest.mark.parametrize("field", IDENTITY_FIELDS)
def test_every_identity_field_changes_the_key(field: str) -> None:
    changed = {**TEACHER, field: "something else"}
    assert request_key(changed, MESSAGES) != request_key(TEACHER, MESSAGES)


def test_servers_and_throughput_settings_do_not_change_the_key() -> None:
    other = {**TEACHER, "base_url": ["http://b/v1", "http://c/v1"], "concurrency": 64, "batch_size": 2, "timeout": 9}
    assert request_key(other, MESSAGES) == request_key(TEACHER, MESSAGES)
    assert request_key(TEACHER, [{"role": "user", "content": "hi!"}]) != request_key(TEACHER, MESSAGES)


def test_round_trip_and_torn_last_line(tmp_path: Path) -> None:
    store = ResponseStore(tmp_path).open()
    store.put("k0", completion(0), run="r")
    store.put("k1", completion(1), run="r")
    store.close()
    with open(tmp_path / STORE_FILE, "ab") as handle:
        handle.write(b'{"key": "k2", "completion": {"sample_idx"')  # what kill -9 mid-write leaves
    reopened = ResponseStore(tmp_path).open()
    assert reopened.get("k0") == completion(0) and reopened.get("k1") == completion(1)
    assert reopened.get("k2") is None and len(reopened) == 2
    # Appending after a torn line must not glue the next record onto it.
    reopened.put("k3", completion(3))
    reopened.close()
    assert ResponseStore(tmp_path).open().get("k3") == completion(3)


def test_finished_runs_are_forgotten_unfinished_ones_remembered(tmp_path: Path) -> None:
    store = ResponseStore(tmp_path).open()
    store.put("a", completion(0), run="done")
    store.finish_run("done")
    store.put("b", completion(1), run="open")
    store.close()
    reopened = ResponseStore(tmp_path).open()
    assert reopened.completed_by_run("done") == set()
    assert reopened.completed_by_run("open") == {"b"}
    assert reopened.get("a") is not None


def test_run_id_depends_on_output_and_requests(tmp_path: Path) -> None:
    assert run_id(tmp_path / "a", ["1", "2"]) == run_id(tmp_path / "a", ["2", "1"])
    assert run_id(tmp_path / "a", ["1"]) != run_id(tmp_path / "b", ["1"])
    assert run_id(tmp_path / "a", ["1"]) != run_id(tmp_path / "a", ["1", "2"])
