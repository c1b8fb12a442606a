"""The generate stage end to end: cache, resume, failures, metadata, and the CLI surviving kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import memdistill
from memdistill.cli import main as cli_main
from memdistill.core.errors import UserError
from memdistill.core.prompt_file import PromptRow, read_prompts
from memdistill.generate.engine import failures_path, generate_dataset
from memdistill.generate.response_store import STORE_FILE
from memdistill.generate.teachers.base import Completion, Failure, SamplingParams, TeacherRequest
from memdistill.generate.teachers.openai_compat import OpenAITeacher
from tests.conftest import REPO_ROOT, write_jsonl
from tests.fake_teacher_server import FakeTeacherServer, expected_response

SECRET = "sk-never-written-anywhere-0123456789"


def prompt_rows(count: int, tag: str = "obs") -> list[dict[str, Any]]:
    return [
        {
            "sample_idx": i,
            "teacher_messages": [
                {"role": "system", "content": "agent prompt + memory instruction"},
                {"role": "user", "content": f"memory ... {tag} {i}"},
            ],
            "student_messages": [{"role": "system", "content": "agent prompt"}, {"role": "user", "content": f"{tag} {i}"}],
            "metadata": {"strategy": "exclude_current", "snapshot": "memory_000200.jsonl", "snapshot_sha256": "ab"},
        }
        for i in range(count)
    ]


def prompts(count: int, tag: str = "obs") -> list[PromptRow]:
    return [PromptRow(r["sample_idx"], r["teacher_messages"], r["student_messages"], r["metadata"]) for r in prompt_rows(count, tag)]


def vllm_teacher(url: str | list[str], **kwargs: Any) -> OpenAITeacher:
    urls = url if isinstance(url, list) else [url]
    options = {"concurrency": 4, "timeout": 5.0, "max_retries": 2, "retry_backoff": 0.01}
    options.update(kwargs)
    return OpenAITeacher("fake-model", urls, "vllm", SamplingParams(max_tokens=6, top_logprobs=4), **options)


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_rows_in_input_order_with_metadata_and_exact_ids(tmp_path: Path) -> None:
    rows = prompts(10)
    with FakeTeacherServer(flavor="vllm", delay=0.002) as server:
        summary = generate_dataset(rows, vllm_teacher(server.url), tmp_path / "dataset.jsonl", tmp_path / "cache")
    out = read_lines(tmp_path / "dataset.jsonl")
    assert [r["metadata"]["sample_idx"] for r in out] == list(range(10))
    first = out[3]
    expected = expected_response(rows[3].teacher_messages, 6, 4)
    assistant = first["messages"][-1]
    assert assistant["token_ids"] == expected.ids and assistant["content"] == expected.text
    assert [t["token_id"] for t in assistant["logprobs"]["content"]] == expected.ids
    assert [m["content"] for m in first["messages"][:-1]] == ["agent prompt", "obs 3"]
    assert first["system_prompt"] == "agent prompt + memory instruction"
    meta = first["metadata"]
    assert meta["teacher"] == {
        "backend": "openai", "flavor": "vllm", "model": "fake-model", "base_url": server.url,
        "max_tokens": 6, "temperature": 0.0, "top_p": 1.0, "top_logprobs": 4, "seed": 0, "logprobs": "tempered",
        # A server's weights and chat template are its own: not known to the client.
        "weights": None, "chat_template_sha256": None,
    }
    assert meta["finish_reason"] == expected.finish_reason and meta["strategy"] == "exclude_current"
    # Token counts, no timing: a timing would make two runs' datasets differ (timings are in metrics/generate.json).
    assert meta["metrics"] == {"input_tokens": meta["metrics"]["input_tokens"], "output_tokens": len(expected.ids)}
    assert meta["memdistill_version"] == memdistill.__version__
    assert summary.requests == 10 and summary.cache_hits == 0 and summary.failures == 0
    assert summary.output_tokens == sum(len(r["messages"][-1]["token_ids"]) for r in out)
    assert not failures_path(tmp_path / "dataset.jsonl").exists()


def test_cache_pays_only_for_new_samples_and_no_cache_asks_again(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with FakeTeacherServer(flavor="vllm") as server:
        generate_dataset(prompts(5), vllm_teacher(server.url), tmp_path / "a.jsonl", cache)
        server.reset_counts()
        summary = generate_dataset(prompts(8), vllm_teacher(server.url), tmp_path / "b.jsonl", cache)
        assert summary.cache_hits == 5 and summary.requests == 3
        assert set(server.received) == {"memory ... obs 5", "memory ... obs 6", "memory ... obs 7"}
        server.reset_counts()
        summary = generate_dataset(prompts(8), vllm_teacher(server.url), tmp_path / "b.jsonl", cache, use_cache=False)
        assert summary.cache_hits == 0 and sum(server.received.values()) == 8
        server.reset_counts()
        # A sampling change is a different request: nothing may come from the cache.
        hotter = OpenAITeacher("fake-model", [server.url], "vllm", SamplingParams(max_tokens=6, top_logprobs=4, temperature=0.5))
        summary = generate_dataset(prompts(8), hotter, tmp_path / "c.jsonl", cache)
        assert summary.cache_hits == 0 and sum(server.received.values()) == 8
    # The cached rows are the same rows.
    assert read_lines(tmp_path / "a.jsonl")[0]["messages"] == read_lines(tmp_path / "b.jsonl")[0]["messages"]


def test_failures_are_listed_fail_the_stage_and_a_rerun_retries_only_them(tmp_path: Path) -> None:
    output, cache = tmp_path / "dataset.jsonl", tmp_path / "cache"
    broken = {"memory ... obs 2", "memory ... obs 5"}
    healthy = False

    def plan(key: str, attempt: int) -> str | None:
        return "500" if key in broken and not healthy else None

    with FakeTeacherServer(flavor="vllm", faults=plan) as server:
        with pytest.raises(UserError, match=r"2 of 8 samples failed .*failures\.jsonl"):
            generate_dataset(prompts(8), vllm_teacher(server.url), output, cache)
        assert not output.exists()
        listed = read_lines(failures_path(output))
        assert [f["sample_idx"] for f in listed] == [2, 5]
        assert all(f["attempts"] == 3 and "HTTP 500" in f["error"] for f in listed)

        # Within the allowed rate the stage succeeds, leaving the failed samples out.
        summary = generate_dataset(prompts(8), vllm_teacher(server.url), output, cache, max_failure_rate=0.25)
        assert summary.requests == 2 and summary.failures == 2 and summary.retries == 4
        assert [r["metadata"]["sample_idx"] for r in read_lines(output)] == [0, 1, 3, 4, 6, 7]

        healthy = True
        server.reset_counts()
        summary = generate_dataset(prompts(8), vllm_teacher(server.url), output, cache)
        assert set(server.received) == broken and summary.cache_hits == 6
    assert [r["metadata"]["sample_idx"] for r in read_lines(output)] == list(range(8))
    assert not failures_path(output).exists()


class CrashingTeacher:
    """Answers like the fake server would, then dies after `crash_after` results (a stand-in for kill -9)."""

    def __init__(self, crash_after: int | None = None) -> None:
        self.crash_after = crash_after
        self.asked: list[int] = []

    def describe(self) -> dict[str, Any]:
        return {"backend": "stub", "flavor": None, "model": "stub", "base_url": None, **SamplingParams().to_dict()}

    async def stream(self, requests: Sequence[TeacherRequest]) -> AsyncIterator[Completion | Failure]:
        for number, request in enumerate(requests):
            if self.crash_after is not None and number == self.crash_after:
                raise RuntimeError("crash")
            self.asked.append(request.sample_idx)
            yield Completion(request.sample_idx, f"answer {request.sample_idx}", [1], None, "stop", 3, 1, 0.0)

    async def aclose(self) -> None:
        return None


def test_no_cache_run_resumes_its_own_work_but_not_older_runs(tmp_path: Path) -> None:
    output, cache = tmp_path / "dataset.jsonl", tmp_path / "cache"
    generate_dataset(prompts(6), CrashingTeacher(), output, cache)  # an older, finished run
    first = CrashingTeacher(crash_after=4)
    with pytest.raises(RuntimeError):
        generate_dataset(prompts(6), first, output, cache, use_cache=False)
    second = CrashingTeacher()
    summary = generate_dataset(prompts(6), second, output, cache, use_cache=False)
    assert sorted(second.asked) == sorted(set(range(6)) - set(first.asked)) and summary.cache_hits == 4
    third = CrashingTeacher()  # that run finished: a new --no-cache run asks for everything again
    generate_dataset(prompts(6), third, output, cache, use_cache=False)
    assert sorted(third.asked) == list(range(6))


class CostlyTeacher(CrashingTeacher):
    """Every answer took 2.5 s, 10 prompt tokens and 3 new tokens when it was produced."""

    async def stream(self, requests: Sequence[TeacherRequest]) -> AsyncIterator[Completion | Failure]:
        for request in requests:
            self.asked.append(request.sample_idx)
            yield Completion(request.sample_idx, "abc", [1, 2, 3], None, "length", 10, 3, 2.5)


def test_metrics_keep_what_cached_answers_cost_when_first_produced(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = generate_dataset(prompts(2), CostlyTeacher(), tmp_path / "a.jsonl", cache).to_metrics()
    assert first["requests_sent"] == 2 and first["answers_from_cache"] == 0 and first["generation_seconds_total"] == 5.0
    # Two answers from the store, two new: the dataset's cost counts all four, this run's figures only its own.
    mixed = generate_dataset(prompts(4), CostlyTeacher(), tmp_path / "b.jsonl", cache).to_metrics()
    assert mixed["requests_sent"] == 2 and mixed["answers_from_cache"] == 2
    assert mixed["generation_seconds_total"] == 10.0 and mixed["input_tokens"] == 40 and mixed["output_tokens"] == 12
    replay_teacher = CostlyTeacher()
    replay = generate_dataset(prompts(4), replay_teacher, tmp_path / "c.jsonl", cache).to_metrics()
    assert replay_teacher.asked == [] and replay["requests_sent"] == 0 and replay["answers_from_cache"] == 4
    assert replay["generation_seconds_total"] == 10.0 and replay["output_tokens"] == 12 and replay["tokens_per_second"] == 0.0
    assert replay["wall_seconds"] < replay["generation_seconds_total"]


def test_api_key_never_reaches_any_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMDISTILL_KEY", SECRET)
    input_path = write_jsonl(tmp_path / "prompts.jsonl", prompt_rows(4))
    with FakeTeacherServer(flavor="openai") as server:
        for number, url in enumerate([server.url, server.url.replace("http://", f"http://user:{SECRET}@")]):
            code = cli_main([
                "generate", "--input", str(input_path), "--output", str(tmp_path / f"dataset{number}.jsonl"),
                "--backend", "openai", "--base-url", url, "--flavor", "openai", "--model", "fake-model",
                "--api-key-env", "MEMDISTILL_KEY", "--cache-dir", str(tmp_path / "cache"),
                "--metrics", str(tmp_path / "generate.json"), "--max-tokens", "5", "--no-cache",
            ])
            assert code == 0
        assert f"Bearer {SECRET}" in server.auth_headers
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text(errors="replace"), path
    assert read_lines(tmp_path / "dataset1.jsonl")[0]["metadata"]["teacher"]["base_url"] == server.url
    metrics = json.loads((tmp_path / "generate.json").read_text())
    assert metrics["requests_sent"] == 4 and metrics["failures"] == 0 and metrics["output_tokens"] > 0
    assert set(metrics) >= {"requests_sent", "answers_from_cache", "retries", "failures", "output_tokens", "tokens_per_second"}


def test_bad_flags_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    input_path = write_jsonl(tmp_path / "prompts.jsonl", prompt_rows(1))
    code = cli_main(["generate", "--input", str(input_path), "--output", str(tmp_path / "d.jsonl"), "--backend", "openai"])
    assert code == 2
    assert "base_url" in capsys.readouterr().err
    assert not (tmp_path / "d.jsonl").exists()


def test_kill_9_mid_run_then_rerun_never_rerequests_a_completed_sample(tmp_path: Path) -> None:
    count = 60
    input_path = write_jsonl(tmp_path / "prompts.jsonl", prompt_rows(count, "kill"))
    output, cache = tmp_path / "dataset.jsonl", tmp_path / "cache"
    store = cache / STORE_FILE
    with FakeTeacherServer(flavor="tokasaurus", delay=0.05) as server:
        command = [
            sys.executable, "-m", "memdistill.cli", "generate", "--input", str(input_path), "--output", str(output),
            "--backend", "openai", "--base-url", server.url, "--flavor", "tokasaurus", "--model", "fake-model",
            "--concurrency", "4", "--max-tokens", "6", "--top-logprobs", "3", "--cache-dir", str(cache),
        ]
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not store.exists() or store.read_bytes().count(b"\n") < 12):
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert not output.exists()
        journaled = {
            json.loads(line)["completion"]["sample_idx"] for line in store.read_bytes().split(b"\n") if line.strip()
            if line.startswith(b"{") and line.endswith(b"}")
        }
        assert 12 <= len(journaled) < count, "the kill should land mid-run"
        server.reset_counts()
        rerun = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert rerun.returncode == 0, rerun.stderr
        asked_again = {int(key.rsplit(" ", 1)[1]) for key in server.received}
    assert not asked_again & journaled
    assert asked_again | journaled == set(range(count))
    rows = read_lines(output)
    assert [r["metadata"]["sample_idx"] for r in rows] == list(range(count))
    for row, prompt in zip(rows, read_prompts(input_path)):
        assert row["messages"][-1]["token_ids"] == expected_response(prompt.teacher_messages, 6, 3).ids
