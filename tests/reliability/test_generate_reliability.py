"""generate under a killed process and a faulty server: every sample exactly once, nothing bought twice."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from memdistill.core.prompt_file import read_prompts
from memdistill.generate.engine import generate_dataset
from memdistill.generate.response_store import STORE_FILE
from memdistill.generate.teachers.base import SamplingParams
from memdistill.generate.teachers.openai_compat import OpenAITeacher
from tests.conftest import write_jsonl
from tests.fake_teacher_server import FakeTeacherServer, expected_response
from tests.reliability.harness import CLI, cli_env, run_cli

FAULTS = ["500", "503", "429", "timeout", "reset", "truncated"]


def prompt_rows(count: int, tag: str) -> list[dict[str, Any]]:
    return [
        {
            "sample_idx": i,
            "teacher_messages": [{"role": "system", "content": "agent + memory instruction"}, {"role": "user", "content": f"memory {tag} {i}"}],
            "student_messages": [{"role": "system", "content": "agent"}, {"role": "user", "content": f"{tag} {i}"}],
            "metadata": {"strategy": "exclude_current"},
        }
        for i in range(count)
    ]


def journaled_samples(store: Path) -> set[int]:
    if not store.exists():
        return set()
    done = set()
    for line in store.read_bytes().split(b"\n"):
        try:
            done.add(json.loads(line)["completion"]["sample_idx"])
        except (ValueError, KeyError):
            continue  # the torn last line of a killed run
    return done


def test_generate_survives_sigkill_and_never_rebuys_a_completed_sample(tmp_path: Path) -> None:
    count, rounds = 40, 20
    input_path = write_jsonl(tmp_path / "prompts.jsonl", prompt_rows(count, "kill"))
    output, cache = tmp_path / "dataset.jsonl", tmp_path / "cache"
    rng = random.Random(5)
    with FakeTeacherServer(flavor="tokasaurus", delay=0.03) as server:
        args = ["generate", "--input", str(input_path), "--output", str(output), "--backend", "openai",
                "--base-url", server.url, "--flavor", "tokasaurus", "--model", "fake-model", "--concurrency", "4",
                "--max-tokens", "6", "--top-logprobs", "3", "--cache-dir", str(cache)]
        assert run_cli(args, tmp_path).returncode == 0
        reference = output.read_bytes()  # no wall-clock field: two runs write the same bytes
        shutil.rmtree(cache)  # time a second cold run: the first may have filled other caches
        started = time.perf_counter()
        assert run_cli(args, tmp_path).returncode == 0
        duration = time.perf_counter() - started
        assert output.read_bytes() == reference
        killed_mid_run = 0
        for number in range(rounds):
            shutil.rmtree(cache)
            output.unlink(missing_ok=True)
            server.reset_counts()
            process = subprocess.Popen([*CLI, *args], cwd=tmp_path, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if number % 2 == 0:  # at a random moment (often during start-up)
                time.sleep(rng.uniform(0.1, duration))
            else:  # once a random number of responses are journaled: certainly mid-run
                target, deadline = rng.randint(1, count - 1), time.monotonic() + 30
                while time.monotonic() < deadline and process.poll() is None and len(journaled_samples(cache / STORE_FILE)) < target:
                    time.sleep(0.01)
            process.send_signal(signal.SIGKILL)
            process.wait()
            assert not output.exists() or output.read_bytes() == reference, f"round {number}: partial dataset"
            done = journaled_samples(cache / STORE_FILE)
            killed_mid_run += 0 < len(done) < count
            server.reset_counts()
            rerun = run_cli(args, tmp_path)
            assert rerun.returncode == 0, rerun.stderr
            asked_again = {int(key.rsplit(" ", 1)[1]) for key in server.received}
            assert not asked_again & done, f"round {number}: re-requested completed samples {sorted(asked_again & done)}"
            assert output.read_bytes() == reference, f"round {number}: re-run output differs"
    print(f"generate: {rounds} kills, {killed_mid_run} mid-run, reference run {duration:.2f}s")
    assert killed_mid_run >= rounds // 4  # the journal-triggered half of the kills lands mid-run


def fault_plan(rate: float, seed: int):
    def plan(key: str, attempt: int) -> str | None:
        digest = hashlib.sha256(f"{seed}:{key}:{attempt}".encode()).digest()
        if digest[0] / 256 >= rate:
            return None
        return FAULTS[digest[1] % len(FAULTS)]

    return plan


def test_faulty_teacher_every_sample_exactly_once(tmp_path: Path) -> None:
    count = 200
    input_path = write_jsonl(tmp_path / "prompts.jsonl", prompt_rows(count, "faulty"))
    output = tmp_path / "dataset.jsonl"
    with FakeTeacherServer(flavor="vllm", faults=fault_plan(0.3, seed=11), hang=2.0, retry_after="0.2") as server:
        teacher = OpenAITeacher("fake-model", [server.url], "vllm", SamplingParams(max_tokens=6, top_logprobs=5),
                                concurrency=16, timeout=0.5, max_retries=8, retry_backoff=0.05)
        started = time.perf_counter()
        summary = generate_dataset(read_prompts(input_path), teacher, output, tmp_path / "cache")
        wall = time.perf_counter() - started
        requests = sum(server.received.values())
        injected = {name: 0 for name in FAULTS}
        plan = fault_plan(0.3, seed=11)
        for key, attempts in server.received.items():
            for attempt in range(1, attempts + 1):
                fault = plan(key, attempt)
                if fault:
                    injected[fault] += 1
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [row["metadata"]["sample_idx"] for row in rows] == list(range(count))
    for row, prompt in zip(rows, read_prompts(input_path)):
        expected = expected_response(prompt.teacher_messages, 6, 5)
        assistant = row["messages"][-1]
        assert assistant["token_ids"] == expected.ids
        assert [t["logprob"] for t in assistant["logprobs"]["content"]] == expected.chosen
    assert summary.failures == 0 and summary.retries == requests - count
    share = sum(injected.values()) / requests
    assert 0.2 < share < 0.4 and all(injected.values()), injected
    print(f"faulty teacher: {count} samples, {requests} requests, {summary.retries} retries, "
          f"{share:.0%} of requests failed {injected}, wall {wall:.1f}s")
