"""The embedded teacher's generation speed against a bare batched `model.generate` of the same model.

Same prompts, same batches (sorted by length, left-padded), same batch size, greedy. The bare call asks
for nothing but the sequences; the teacher also keeps the scores, log-softmaxes them, takes the top-k and
builds the per-token records. Tokens are counted the same way for both (up to and including EOS).
Also reports the load time (the de-quantised weights are cached on disk after the first load).
Target: the teacher reaches >= 0.8 of the bare tokens/s.

Besides wall-clock tokens/s it reports tokens per CPU-second of this process: on a shared machine other
jobs' load swings the wall clock by several times between runs, while CPU time measures the work done.
Use `--threads 1` (the default) for the steadiest CPU-time figures.

    .venv/bin/python -m bench.bench_local_teacher [--prompts 16] [--max-tokens 32] [--batch-size 8] [--repeats 2]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from memdistill.core.models import EMBEDDED_MODEL  # noqa: E402
from memdistill.generate.teachers.base import SamplingParams, TeacherRequest  # noqa: E402
from memdistill.generate.teachers.local import LocalTeacher  # noqa: E402


def make_requests(count: int) -> list[TeacherRequest]:
    return [
        TeacherRequest(i, [
            {"role": "system", "content": "You are a math tutor agent. Solve grade-school word problems step by step."},
            {"role": "user", "content": f"Problem {i}: A shop sells {i + 3} pencils for {2 * i + 5} euros. "
                                        f"How much do {i + 7} pencils cost?" + " Explain." * (i % 5)},
        ])
        for i in range(count)
    ]


def bare_generate(teacher: LocalTeacher, batches: list[list[TeacherRequest]], max_tokens: int) -> tuple[float, float]:
    import torch

    tokenizer, model = teacher._tokenizer, teacher._model
    eos = sorted(teacher._eos_ids())
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    tokens = 0
    started, cpu_started = time.perf_counter(), time.process_time()
    for batch in batches:
        prompts = teacher._encode(batch)
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, ids in enumerate(prompts):
            input_ids[row, width - len(ids):] = torch.tensor(ids)
            attention[row, width - len(ids):] = 1
        with torch.inference_mode():
            sequences = model.generate(input_ids=input_ids, attention_mask=attention, max_new_tokens=max_tokens,
                                       do_sample=False, top_k=None, top_p=None, temperature=None,
                                       pad_token_id=pad_id, eos_token_id=eos)
        for row in sequences[:, width:].tolist():
            stop = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
            tokens += stop
    return tokens / (time.perf_counter() - started), tokens / (time.process_time() - cpu_started)


def teacher_generate(teacher: LocalTeacher, batches: list[list[TeacherRequest]]) -> tuple[float, float]:
    tokens = 0
    started, cpu_started = time.perf_counter(), time.process_time()
    for batch in batches:
        tokens += sum(c.output_tokens for c in teacher.generate_batch(batch))
    return tokens / (time.perf_counter() - started), tokens / (time.process_time() - cpu_started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--top-logprobs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads for both")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    torch.set_num_threads(args.threads)
    teacher = LocalTeacher(EMBEDDED_MODEL, SamplingParams(max_tokens=args.max_tokens, top_logprobs=args.top_logprobs),
                           args.batch_size)
    started = time.perf_counter()
    teacher._load()
    load_seconds = time.perf_counter() - started
    requests = sorted(make_requests(args.prompts), key=lambda r: sum(len(m["content"]) for m in r.messages))
    batches = [requests[i : i + args.batch_size] for i in range(0, len(requests), args.batch_size)]
    bare_generate(teacher, batches[:1], 4)  # warm-up
    bare, ours = [], []
    for _ in range(args.repeats):  # interleaved, so drifting machine load hits both alike
        bare.append(bare_generate(teacher, batches, args.max_tokens))
        ours.append(teacher_generate(teacher, batches))
    b_wall, m_wall = statistics.median(x[0] for x in bare), statistics.median(x[0] for x in ours)
    b_cpu, m_cpu = statistics.median(x[1] for x in bare), statistics.median(x[1] for x in ours)
    print(f"prompts={args.prompts} max_tokens={args.max_tokens} batch_size={args.batch_size} "
          f"top_logprobs={args.top_logprobs} repeats={args.repeats} threads={args.threads}")
    print(f"load (cached weights) : {load_seconds:6.2f} s")
    print(f"bare model.generate   : {b_wall:8.1f} tokens/s wall, {b_cpu:8.1f} tokens/CPU-s "
          f"(runs: {', '.join(f'{x[0]:.1f}/{x[1]:.1f}' for x in bare)})")
    print(f"LocalTeacher          : {m_wall:8.1f} tokens/s wall, {m_cpu:8.1f} tokens/CPU-s "
          f"(runs: {', '.join(f'{x[0]:.1f}/{x[1]:.1f}' for x in ours)})")
    print(f"ratio                 : {m_wall / b_wall:.2f} wall, {m_cpu / b_cpu:.2f} CPU (target >= 0.8)")


if __name__ == "__main__":
    main()
