"""Client overhead of `memdistill generate` (openai backend) against a bare `openai` async loop.

Both talk to the same fast loopback server (tests/fake_teacher_server.py in its own process, vLLM wire
shape, top-k logprobs) at the same concurrency. The bare loop only sends requests and parses responses;
memdistill additionally decodes logprobs, journals every response (append + background fsync), and
writes dataset.jsonl. Target: memdistill reaches >= 0.9 of the bare loop's rows/s.

    .venv/bin/python -m bench.bench_generate_client [--samples 2000] [--concurrency 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from openai import AsyncOpenAI

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from memdistill.generate.teachers.base import SamplingParams  # noqa: E402
from memdistill.generate.teachers.openai_compat import OpenAITeacher  # noqa: E402
from stages.generate import GenerateConfig, run  # noqa: E402

MODEL = "bench-model"


def start_server(flavor: str) -> tuple[subprocess.Popen, str]:
    server = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "tests" / "fake_teacher_server.py"), "--flavor", flavor, "--port", "0"],
        stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT,
    )
    line = server.stdout.readline()  # "PORT <n>" once listening
    return server, f"http://127.0.0.1:{int(line.split()[1])}/v1"


def write_prompts(path: Path, samples: int) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(samples):
            row = {
                "sample_idx": i,
                "teacher_messages": [{"role": "system", "content": "memory ..."}, {"role": "user", "content": f"observation {i}"}],
                "student_messages": [{"role": "user", "content": f"observation {i}"}],
                "metadata": {},
            }
            handle.write(json.dumps(row) + "\n")


async def bare_loop(url: str, samples: int, concurrency: int, sampling: SamplingParams, flavor: str) -> float:
    """The baseline: a worker pool of plain `chat.completions.create` calls, responses kept in a list."""
    client = AsyncOpenAI(api_key="EMPTY", base_url=url, max_retries=0)
    body_of = OpenAITeacher(MODEL, [url], flavor, sampling).request_body  # the very same request body
    todo = list(range(samples))
    results = []

    async def worker() -> None:
        while todo:
            i = todo.pop()
            messages = [{"role": "system", "content": "memory ..."}, {"role": "user", "content": f"observation {i}"}]
            response = await client.chat.completions.create(**body_of(messages))
            results.append(response)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await client.close()
    assert len(results) == samples
    return samples / elapsed


def memdistill_run(url: str, prompts: Path, workdir: Path, concurrency: int, sampling: SamplingParams, flavor: str) -> float:
    cache = Path(tempfile.mkdtemp(dir=workdir))  # fresh: every sample is a real request
    config = GenerateConfig(
        backend="openai", model=MODEL, base_url=[url], flavor=flavor, max_tokens=sampling.max_tokens,
        top_logprobs=sampling.top_logprobs, concurrency=concurrency, cache_dir=str(cache),
    )
    started = time.perf_counter()  # the whole stage: reading prompts, requests, journal, dataset.jsonl
    metrics = run(config, prompts, cache / "dataset.jsonl")
    elapsed = time.perf_counter() - started
    assert metrics["requests_sent"] == metrics["samples"] and metrics["failures"] == 0
    return metrics["samples"] / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--top-logprobs", type=int, default=5)
    parser.add_argument("--flavor", default="vllm", choices=("tokasaurus", "vllm", "openai"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    sampling = SamplingParams(max_tokens=args.max_tokens, top_logprobs=args.top_logprobs)
    server, url = start_server(args.flavor)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            prompts = workdir / "prompts.jsonl"
            write_prompts(prompts, args.samples)
            asyncio.run(bare_loop(url, min(200, args.samples), args.concurrency, sampling, args.flavor))  # warm-up
            bare, ours = [], []
            for _ in range(args.repeats):  # interleaved, so drifting machine load hits both alike
                bare.append(asyncio.run(bare_loop(url, args.samples, args.concurrency, sampling, args.flavor)))
                ours.append(memdistill_run(url, prompts, workdir, args.concurrency, sampling, args.flavor))
    finally:
        server.terminate()
        server.wait()
    b, m = statistics.median(bare), statistics.median(ours)
    print(f"samples={args.samples} concurrency={args.concurrency} flavor={args.flavor} max_tokens={args.max_tokens} "
          f"top_logprobs={args.top_logprobs} repeats={args.repeats}")
    print(f"bare openai loop : {b:8.1f} rows/s (runs: {', '.join(f'{x:.0f}' for x in bare)})")
    print(f"memdistill       : {m:8.1f} rows/s (runs: {', '.join(f'{x:.0f}' for x in ours)})")
    print(f"ratio            : {m / b:.2f} (target >= 0.9)")


if __name__ == "__main__":
    main()
