"""Prefix reuse in the embedded teacher against bare batched `model.generate` on the same prompts.

The prompts come from the bundled example through the snapshots stage itself (`memdistill snapshots
--strategy S --max-prompt-tokens 8000`, which keeps the whole memory of ep_000200): for `full_memory` every
prompt is system prompt + whole memory + its own observation; for `exclude_current` prompt i shares the
memory up to sample i's own entries. `--prompts N` takes N samples spread evenly over the snapshot (all by
default: a full run of the bare side costs about a CPU-minute per prompt at ~7k tokens); `--entries N`
keeps only the snapshot's first N entries (a shorter memory, as earlier in the episode).

Bare: the same prompts in the order the old teacher ran them (sorted by length), `batch_size` at a time,
left-padded, one greedy `model.generate` per batch asking for the sequences only. Prefix reuse:
`LocalTeacher.generate_reusing_prefixes`, which also keeps the scores and builds the top-k records.
Both count the same prompt tokens (chat template included); the figure is prompt tokens per second of
the whole generation (prefill and decoding), wall clock and per CPU-second of this process. The greedy
ids of both sides are compared.
Targets: >= 1.7x prompt tokens/s on exclude_current, >= 5x on full_memory.

    .venv/bin/python -m bench.bench_prefix_reuse --strategy full_memory [--prompts 8] [--max-tokens 16]
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from memdistill.core.models import EMBEDDED_MODEL  # noqa: E402
from memdistill.core.prompt_file import read_prompts  # noqa: E402
from memdistill.generate.teachers.base import Completion, SamplingParams, TeacherRequest  # noqa: E402
from memdistill.generate.teachers.local import LocalTeacher  # noqa: E402
from memdistill.generate.teachers.prefix_plan import plan_prefix_reuse, prefill_tokens  # noqa: E402

TARGETS = {"full_memory": 5.0, "exclude_current": 1.7}


def snapshot_requests(
    checkpoint: Path, snapshot: str, strategy: str, max_prompt_tokens: int, count: int | None, entries: int | None
) -> list[TeacherRequest]:
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "prompts.jsonl"
        if entries is not None:  # the snapshot's first entries, as the agent's memory was earlier in the episode
            source = sorted(checkpoint.glob("memory_*.jsonl"))[-1] if snapshot == "latest" else checkpoint / snapshot
            checkpoint, snapshot = Path(folder) / "checkpoint", source.name
            checkpoint.mkdir()
            lines = source.read_text(encoding="utf-8").splitlines(keepends=True)[:entries]
            (checkpoint / snapshot).write_text("".join(lines), encoding="utf-8")
        subprocess.run(
            [sys.executable, "-m", "memdistill.cli", "snapshots", "--checkpoint-dir", str(checkpoint), "--snapshot", snapshot,
             "--strategy", strategy, "--max-prompt-tokens", str(max_prompt_tokens), "--output", str(output),
             "--params", str(REPO_ROOT / "params.yaml")],
            check=True, cwd=REPO_ROOT,
        )
        rows = read_prompts(output)
    if count is not None and count < len(rows):
        rows = [rows[round(j * len(rows) / count)] for j in range(count)]
    return [TeacherRequest(row.sample_idx, row.teacher_messages) for row in rows]


def bare_generate(teacher: LocalTeacher, requests: list[TeacherRequest], max_tokens: int) -> tuple[float, float, dict[int, list[int]]]:
    """Seconds wall, CPU-seconds and greedy ids per sample of plain batched generation."""
    import torch

    model, eos = teacher._model, sorted(teacher._eos_ids())
    ordered = sorted(requests, key=lambda r: sum(len(m["content"]) for m in r.messages))
    ids: dict[int, list[int]] = {}
    started, cpu_started = time.perf_counter(), time.process_time()
    for start in range(0, len(ordered), teacher.batch_size):
        batch = ordered[start : start + teacher.batch_size]
        prompts = teacher._encode(batch)
        input_ids, attention = teacher._left_padded(prompts, max(len(p) for p in prompts))
        with torch.inference_mode():
            sequences = model.generate(input_ids=input_ids, attention_mask=attention, max_new_tokens=max_tokens,
                                       do_sample=False, top_k=None, top_p=None, temperature=None,
                                       pad_token_id=teacher._pad_id(), eos_token_id=eos)
        for request, row in zip(batch, sequences[:, input_ids.shape[1]:].tolist()):
            stop = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
            ids[request.sample_idx] = row[:stop]
    return time.perf_counter() - started, time.process_time() - cpu_started, ids


def reuse_generate(teacher: LocalTeacher, requests: list[TeacherRequest]) -> tuple[float, float, list[Completion]]:
    started, cpu_started = time.perf_counter(), time.process_time()
    completions = teacher.generate_reusing_prefixes(requests)
    return time.perf_counter() - started, time.process_time() - cpu_started, completions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategy", choices=sorted(TARGETS), default="full_memory")
    parser.add_argument("--checkpoint-dir", type=Path, default=REPO_ROOT / "data" / "checkpoints" / "ep_000200")
    parser.add_argument("--snapshot", default="latest")
    parser.add_argument("--entries", type=int, default=None, help="keep only the snapshot's first N entries (default all)")
    parser.add_argument("--max-prompt-tokens", type=int, default=8000)
    parser.add_argument("--prompts", type=int, default=None, help="samples spread evenly over the snapshot (default all)")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads for both")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    torch.set_num_threads(args.threads)
    requests = snapshot_requests(args.checkpoint_dir, args.snapshot, args.strategy, args.max_prompt_tokens, args.prompts, args.entries)
    teacher = LocalTeacher(EMBEDDED_MODEL, SamplingParams(max_tokens=args.max_tokens, top_logprobs=20), args.batch_size)
    teacher._load()
    prompts = teacher._encode(requests)
    prompt_tokens = sum(len(p) for p in prompts)
    computed = prefill_tokens(prompts, plan_prefix_reuse(prompts))
    warm_up = [TeacherRequest(-1, [{"role": "user", "content": "What is 2 + 2?"}])] * 2
    teacher.generate_batch(warm_up), teacher.generate_reusing_prefixes(warm_up)

    b_wall, b_cpu, bare_ids = bare_generate(teacher, requests, args.max_tokens)
    r_wall, r_cpu, completions = reuse_generate(teacher, requests)
    same = sum(bare_ids[c.sample_idx] == c.token_ids for c in completions)

    print(f"strategy={args.strategy} snapshot={args.snapshot} entries={args.entries or 'all'} prompts={len(requests)} max_prompt_tokens={args.max_prompt_tokens} "
          f"max_tokens={args.max_tokens} batch_size={args.batch_size} threads={args.threads}")
    print(f"prompt tokens          : {prompt_tokens} ({min(map(len, prompts))}-{max(map(len, prompts))} per prompt); "
          f"computed with reuse: {computed} ({prompt_tokens / computed:.2f}x fewer)")
    print(f"bare model.generate    : {prompt_tokens / b_wall:8.1f} prompt tokens/s wall, {prompt_tokens / b_cpu:8.1f} per CPU-s "
          f"({b_wall:.1f} s, {b_cpu:.1f} CPU-s)")
    print(f"LocalTeacher (reuse)   : {prompt_tokens / r_wall:8.1f} prompt tokens/s wall, {prompt_tokens / r_cpu:8.1f} per CPU-s "
          f"({r_wall:.1f} s, {r_cpu:.1f} CPU-s)")
    print(f"speed-up               : {b_wall / r_wall:.2f}x wall, {b_cpu / r_cpu:.2f}x CPU (target >= {TARGETS[args.strategy]}x)")
    print(f"greedy ids identical   : {same}/{len(completions)}")


if __name__ == "__main__":
    main()
