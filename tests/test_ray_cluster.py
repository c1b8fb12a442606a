"""`ray_address` joins an existing Ray cluster: two nodes started beforehand (ray.cluster_utils.Cluster, Ray's
own multi-node test cluster, here on one machine so every path is shared), and the memdistill CLI as a user
runs it. The cluster's own tables show the CLI's driver was a job of that cluster and that the teacher
actors ran on both of its nodes; the rows equal a single-process run's."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ray.cluster_utils import Cluster

from memdistill.core.ray_runtime import host_and_port
from memdistill.generate.engine import generate_dataset
from memdistill.generate.teachers.base import SamplingParams
from memdistill.generate.teachers.local import LocalTeacher
from stages import convert as convert_stage
from tests.conftest import write_jsonl
from tests.test_generate import prompt_rows, prompts
from tests.test_ray_executor import assert_same_conversions, assert_same_generations

SAMPLING = SamplingParams(max_tokens=6, temperature=0.0, top_logprobs=5)
COUNT = 4


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A head and a worker node, one CPU each; stopped (its own processes only) even when a test fails.

    Everything Ray writes lives in one fresh folder, removed afterwards: the nodes' session files and the
    address file that `Cluster` writes into Ray's *default* temp folder (`$RAY_TMPDIR/ray`), which exists
    only where an earlier Ray run happened to create it."""
    temp_dir = tempfile.mkdtemp(prefix="mdray-")  # short: Ray's socket paths live under it
    (Path(temp_dir) / "ray").mkdir()
    saved = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = temp_dir
    started = Cluster()
    try:
        started.add_node(num_cpus=1, include_dashboard=False, temp_dir=temp_dir)
        started.add_node(num_cpus=1)
        started.wait_for_nodes()
        yield started
    finally:
        started.shutdown()
        if saved is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = saved
        shutil.rmtree(temp_dir, ignore_errors=True)


def memdistill(*args: Any, cwd: Path, timeout: float = 300) -> tuple[int, int, str]:
    """The CLI in its own process, as a user runs it (its driver is not this test's): pid, exit status, stderr."""
    process = subprocess.Popen([sys.executable, "-m", "memdistill.cli", *map(str, args)], cwd=cwd,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, stderr = process.communicate(timeout=timeout)
    return process.pid, process.returncode, stderr


def driver_job(cluster: Cluster, pid: int) -> str:
    jobs = [job["JobID"] for job in cluster.global_state.job_table() if job["DriverPid"] == pid]
    assert len(jobs) == 1, f"the driver (pid {pid}) is not a job of the cluster: memdistill did not join it"
    return jobs[0]


def test_generate_and_convert_join_an_existing_two_node_cluster(cluster: Cluster, tmp_path: Path) -> None:
    address = f"127.0.0.1:{cluster.address.rsplit(':', 1)[1]}"
    write_jsonl(tmp_path / "prompts.jsonl", prompt_rows(COUNT))
    # Relative paths, as a user types them: the cluster's workers run in folders of their own.
    pid, status, stderr = memdistill(
        "generate", "--input", "prompts.jsonl", "--output", "ray.jsonl", "--executor", "ray", "--ray-address", address,
        "--num-workers", 2, "--batch-size", 1, "--max-tokens", SAMPLING.max_tokens, "--top-logprobs", SAMPLING.top_logprobs,
        "--cache-dir", "cache", cwd=tmp_path,
    )
    assert status == 0, stderr
    job = driver_job(cluster, pid)
    actors = [a for a in cluster.global_state.actor_table(None).values() if a["JobID"] == job and "TeacherActor" in a["ActorClassName"]]
    nodes = {node["NodeID"] for node in cluster.global_state.node_table()}
    assert len(actors) == 2 and {a["Address"]["NodeID"] for a in actors} == nodes  # one teacher actor on each node

    local_out = tmp_path / "local.jsonl"
    generate_dataset(prompts(COUNT), LocalTeacher("smollm2-135m-instruct", SAMPLING, batch_size=1), local_out, tmp_path / "cache-local")
    assert_same_generations(local_out, tmp_path / "ray.jsonl", COUNT)

    pid, status, stderr = memdistill("convert", "--input", "ray.jsonl", "--output", "ray.parquet", "--executor", "ray",
                                     "--ray-address", address, "--shards", 2, cwd=tmp_path)
    assert status == 0, stderr
    driver_job(cluster, pid)
    convert_stage.run(convert_stage.ConvertConfig(), local_out, tmp_path / "local.parquet")
    assert_same_conversions(tmp_path / "local.parquet", tmp_path / "ray.parquet", COUNT)


def test_an_address_where_nothing_listens_is_one_line_and_a_non_zero_exit(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    prompt_file = write_jsonl(tmp_path / "prompts.jsonl", prompt_rows(1))
    # Ray alone retries for many minutes; the answer must come at once.
    _, status, stderr = memdistill("generate", "--input", prompt_file, "--output", "out.jsonl", "--executor", "ray",
                                   "--ray-address", f"127.0.0.1:{port}", "--cache-dir", "cache", cwd=tmp_path, timeout=60)
    assert status != 0 and "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (
        f"memdistill generate: error: ray_address: nothing answers at 127.0.0.1:{port} (Connection refused); "
        "start the cluster first (`ray start --head`) or leave ray_address empty to run on a local Ray instance"
    )
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize(
    ("address", "target"),
    [("head:6379", ("head", 6379)), ("ray://10.0.0.5:10001", ("10.0.0.5", 10001)), ("[::1]:6379", ("::1", 6379)),
     ("auto", None), ("local", None), ("head", None)],
)
def test_only_explicit_host_port_addresses_are_probed(address: str, target: tuple[str, int] | None) -> None:
    assert host_and_port(address) == target
