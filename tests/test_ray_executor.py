"""generate and convert on a real local Ray cluster (loopback, two worker CPUs): the rows equal the
single-process run's, every sample exactly once, also when an actor is killed in the middle."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import ray

from memdistill.core.errors import UserError
from memdistill.core.shards import part_files
from memdistill.generate.engine import generate_dataset
from memdistill.generate.ray import RayTeacherPool
from memdistill.generate.response_store import STORE_FILE
from memdistill.generate.teachers.base import SamplingParams
from memdistill.generate.teachers.local import LocalTeacher
from stages import convert as convert_stage
from stages import generate as generate_stage
from tests.conftest import REPO_ROOT, write_jsonl
from tests.echo_teacher import EchoTeacher
from tests.test_generate import prompt_rows, prompts, read_lines

SAMPLING = SamplingParams(max_tokens=6, temperature=0.0, top_logprobs=5)


@pytest.fixture(scope="module")
def cluster() -> Any:
    """Two worker CPUs on loopback; workers import this repository's tests (the fake teacher) too."""
    ray.init(
        num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1",
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT)}},
    )
    yield ray
    ray.shutdown()


def rows_by_sample(path: Path) -> dict[int, dict]:
    rows = [row for part in part_files(path) for row in read_lines(part)]
    by_sample = {row["metadata"]["sample_idx"]: row for row in rows}
    assert len(by_sample) == len(rows), "a sample was written twice"
    return by_sample


def sample_of(row: dict) -> int:
    metadata = row["metadata"]  # JSON text, or a struct (a dict once read)
    return (json.loads(metadata) if isinstance(metadata, str) else metadata)["sample_idx"]


def assistant_arrays(row: dict) -> tuple[list[int], np.ndarray, list[list[int]]]:
    items = row["messages"][-1]["logprobs"]["content"]
    ids = [item["token_id"] for item in items]
    top = np.array([[entry["logprob"] for entry in item["top_logprobs"]] for item in items])
    return ids, top, [[entry["token_id"] for entry in item["top_logprobs"]] for item in items]


def assert_same_generations(local: Path, sharded: Path, count: int) -> None:
    """Same ids and top-k ids per sample; logprobs equal up to float noise (batches pad differently)."""
    local_rows, ray_rows = rows_by_sample(local), rows_by_sample(sharded)
    assert sorted(ray_rows) == list(range(count))
    for sample in range(count):
        local_ids, local_top, local_top_ids = assistant_arrays(local_rows[sample])
        ray_ids, ray_top, ray_top_ids = assistant_arrays(ray_rows[sample])
        assert ray_ids == local_ids and ray_top_ids == local_top_ids
        np.testing.assert_allclose(ray_top, local_top, rtol=0, atol=1e-4)


def assert_same_conversions(single_file: Path, sharded: Path, count: int) -> None:
    single = {sample_of(r): r for r in pd.read_parquet(single_file).to_dict(orient="records")}
    rows = pd.read_parquet(sharded).to_dict(orient="records")
    assert sorted(sample_of(row) for row in rows) == list(range(count))
    for row in rows:
        expected = single[sample_of(row)]
        got_top, want_top = row["messages"][-1]["top_logprobs"], expected["messages"][-1]["top_logprobs"]
        assert list(row["messages"][-1]["token_ids"]) == list(expected["messages"][-1]["token_ids"])
        assert list(got_top["token_id"]) == list(want_top["token_id"])
        np.testing.assert_allclose(got_top["logprobs"], want_top["logprobs"], rtol=0, atol=1e-4)


def test_generate_and_convert_on_ray_equal_the_single_process_run(cluster: Any, tmp_path: Path) -> None:
    count = 6
    local_out = tmp_path / "local.jsonl"
    generate_dataset(prompts(count), LocalTeacher("smollm2-135m-instruct", SAMPLING, batch_size=2), local_out, tmp_path / "cache-local")

    prompt_file = write_jsonl(tmp_path / "prompts.jsonl", prompt_rows(count))
    config = generate_stage.GenerateConfig(
        executor="ray", num_workers=2, batch_size=2, max_tokens=SAMPLING.max_tokens, top_logprobs=SAMPLING.top_logprobs,
        cache_dir=str(tmp_path / "cache-ray"),
    )
    metrics = generate_stage.run(config, prompt_file, tmp_path / "ray.jsonl")
    assert metrics["requests_sent"] == count and metrics["failures"] == 0 and metrics["generation_seconds_total"] > 0
    assert len(part_files(tmp_path / "ray.jsonl")) == 2  # shards default to num_workers on ray

    assert_same_generations(local_out, tmp_path / "ray.jsonl", count)
    # Every answer from the cache: nothing sent, but the dataset's cost is still what it took first.
    replay = generate_stage.run(config, prompt_file, tmp_path / "ray.jsonl")
    assert replay["requests_sent"] == 0 and replay["answers_from_cache"] == count
    assert {key: replay[key] for key in ("generation_seconds_total", "input_tokens", "output_tokens")} == {
        key: metrics[key] for key in ("generation_seconds_total", "input_tokens", "output_tokens")}

    convert_stage.run(convert_stage.ConvertConfig(), local_out, tmp_path / "local.parquet")
    convert_stage.run(convert_stage.ConvertConfig(executor="ray", shards=4), tmp_path / "ray.jsonl", tmp_path / "ray.parquet")
    assert len(part_files(tmp_path / "ray.parquet")) == 4
    assert_same_conversions(tmp_path / "local.parquet", tmp_path / "ray.parquet", count)


def test_a_killed_actor_loses_nothing_and_duplicates_nothing(cluster: Any, tmp_path: Path) -> None:
    count = 12
    marker = tmp_path / "killed"
    make = functools.partial(EchoTeacher, die_on_batch=2, marker=marker)
    pool = RayTeacherPool(make, EchoTeacher().describe(), num_workers=2, batch_size=2)
    summary = generate_dataset(prompts(count), pool, tmp_path / "ray.jsonl", tmp_path / "cache", parts=2)
    assert marker.exists(), "no actor was killed: the test would prove nothing"
    assert summary.requests == count and summary.failures == 0

    generate_dataset(prompts(count), EchoTeacher(), tmp_path / "local.jsonl", tmp_path / "cache-local")
    assert rows_by_sample(tmp_path / "ray.jsonl") == rows_by_sample(tmp_path / "local.jsonl")
    stored = [json.loads(line) for line in (tmp_path / "cache" / STORE_FILE).read_text().splitlines()]
    keys = [line["key"] for line in stored if "key" in line]
    assert len(keys) == count and len(set(keys)) == count  # each response recorded once


def test_a_bad_line_under_ray_is_one_user_error_naming_the_line(cluster: Any, tmp_path: Path) -> None:
    """More units than CPUs and the bad line in the first: the error names the line, no unit still writes into
    the staging folder once it is removed, and the driver lives on (it once aborted on a cancelled task)."""
    generate_dataset(prompts(16), EchoTeacher(), tmp_path / "echo.jsonl", tmp_path / "cache")
    lines = (tmp_path / "echo.jsonl").read_text().splitlines(keepends=True)
    lines[1] = '{"messages": 7}\n'
    (tmp_path / "bad.jsonl").write_text("".join(lines))
    with pytest.raises(UserError, match=r"bad\.jsonl:2: ") as caught:
        convert_stage.run(convert_stage.ConvertConfig(executor="ray", model="smollm2-135m-instruct", shards=8),
                          tmp_path / "bad.jsonl", tmp_path / "out.parquet")
    assert "\n" not in str(caught.value)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bad.jsonl", "cache", "echo.jsonl"]
    assert cluster.get(cluster.remote(lambda: 42).remote()) == 42
