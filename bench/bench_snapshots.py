"""Benchmark the snapshots stage on a large synthetic memory.

    .venv/bin/python -m bench.bench_snapshots [--entries 20000] [--max-samples 200] [--max-prompt-tokens 8192]
    .venv/bin/python -m bench.bench_snapshots --strategy random_sampling --samples 64000 --max-samples 0 --tokenizer ''
    .venv/bin/python -m bench.bench_snapshots --strategy random_sampling --samples 64000 --plans-only

Writes a `--entries`-entry snapshot (Observation/Action/Feedback triples, a third of them failed, mixed
text and dict feedback, some e-mail addresses to redact) into a temporary folder, runs the stage with
the embedded teacher's tokenizer counting every prompt, and prints wall time and peak RSS. The output
is streamed row by row, so peak memory should not grow with `--max-samples`; only `max_samples` rows
are written by default because every exclude_current prompt is ~8,192 tokens (~24 kB): all 6,667 samples make
a ~155 MiB file. `--samples N` sizes the snapshot in samples (3 entries each), `--max-samples 0` writes every
sample, and `--plans-only` times the strategy alone (its per-snapshot preparation and every sample's memory
plans, no prompts or tokenizer): the part whose cost must grow with samples x views, not with their square.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import resource
import tempfile
import time
from pathlib import Path

from memdistill.snapshots.checkpoint import load_snapshot
from memdistill.snapshots.strategies import get_strategy
from stages.snapshots import SnapshotsConfig, run

NAMES = ["Zoë", "Søren", "José", "Ingrid", "Yūki", "Amara", "Liam"]


def synthetic_entries(count: int, seed: int = 0) -> list[dict]:
    """A math-tutor-like memory: each problem is an Observation, an Action and (mostly) a Feedback."""
    rng = random.Random(seed)
    entries: list[dict] = []
    problem = 0
    while len(entries) < count:
        problem += 1
        a, b, c = rng.randint(2, 90), rng.randint(2, 12), rng.randint(1, 9)
        name = rng.choice(NAMES)
        right = a * b - c
        given = right if rng.random() > 1 / 3 else right + rng.choice([-c, c, b])
        entries.append({"type": "Observation", "content": (
            f"Problem {problem}: {name} buys {b} boxes of {a} pencils and gives {c} away. "
            f"How many pencils are left? Reply to {name.lower()}@example.com.\n"
            "Solve the problem. Show short working, then end with 'Answer: <number>'.")})
        entries.append({"type": "Action", "content": f"{b} × {a} = {a * b}, minus {c} gives {given}.\nAnswer: {given}"})
        if given == right:
            feedback: str | dict = {"correct": True, "expected": str(right), "given": str(given), "message": "Well done."}
        elif problem % 2:
            feedback = f"Incorrect. The expected answer was {right}; you answered {given}."
        else:
            feedback = {"correct": False, "expected": str(right), "given": str(given), "message": "Wrong: check the order."}
        entries.append({"type": "Feedback", "content": feedback})
    return entries[:count]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def time_plans(path: Path, strategy_name: str) -> None:
    """The strategy alone, with its default params: prepare once, then every sample's plans."""
    snapshot = load_snapshot(path)
    config = SnapshotsConfig(checkpoint_dir=str(path.parent), strategy=strategy_name)
    strategy = get_strategy(strategy_name)
    started = time.perf_counter()
    plans_of = strategy.prepare(snapshot, config.strategy_params(), [False] * len(snapshot.samples))
    views = sum(len(plans_of(sample)) for sample in snapshot.samples)
    elapsed = time.perf_counter() - started
    print(f"snapshot: {len(snapshot.entries)} entries, {len(snapshot.samples)} samples")
    print(f"plans: strategy={strategy_name} {views} views, {elapsed:.2f} s ({elapsed / views * 1e6:.1f} us per view)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=20_000)
    parser.add_argument("--samples", type=int, help="size the snapshot in samples instead (3 entries each)")
    parser.add_argument("--max-samples", type=int, default=200, help="rows to write (0 = every sample)")
    parser.add_argument("--plans-only", action="store_true", help="time only the strategy's memory plans for every sample")
    parser.add_argument("--max-prompt-tokens", type=int, default=8192)
    parser.add_argument("--strategy", default="exclude_current")
    parser.add_argument("--tokenizer", default="smollm2-135m-instruct", help="'' to use the 4-characters estimate")
    args = parser.parse_args()
    if args.samples:
        args.entries = 3 * args.samples
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    with tempfile.TemporaryDirectory(prefix="bench_snapshots.") as tmp:
        folder = Path(tmp) / "ep_000200"
        folder.mkdir()
        snapshot = folder / "memory_000200.jsonl"
        with snapshot.open("w", encoding="utf-8") as handle:
            for entry in synthetic_entries(args.entries):
                handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
        if args.plans_only:
            time_plans(snapshot, args.strategy)
            return
        config = SnapshotsConfig(
            checkpoint_dir=str(folder),
            strategy=args.strategy,
            max_prompt_tokens=args.max_prompt_tokens,
            tokenizer=args.tokenizer or None,
            system_prompt="You are a math tutor agent. Solve grade-school word problems step by step.",
            max_samples=args.max_samples or None,
            sample_selection="random",
            seed=0,
            redact_patterns=[r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"],
        )
        if config.tokenizer:
            from memdistill.core.models import load_tokenizer

            load_tokenizer(config.tokenizer)  # loaded before timing: a one-off cost shared with the other stages
        rss_before = peak_rss_mib()
        output = Path(tmp) / "prompts.jsonl"
        started = time.perf_counter()
        summary = run(config, output)
        elapsed = time.perf_counter() - started
        tokens = [json.loads(line)["metadata"]["prompt_tokens"] for line in output.open(encoding="utf-8")]
        print(f"snapshot: {args.entries} entries, {summary.samples_in_snapshot} samples, {snapshot.stat().st_size / 2**20:.1f} MiB")
        print(f"stage: strategy={args.strategy} max_prompt_tokens={args.max_prompt_tokens} "
              f"tokenizer={config.tokenizer or 'estimate'} max_samples={args.max_samples}")
        print(f"rows written: {summary.rows} ({output.stat().st_size / 2**20:.1f} MiB), "
              f"prompt tokens min/max: {min(tokens)}/{max(tokens)}, memory samples dropped for budget: {summary.dropped_for_budget}")
        print(f"wall time: {elapsed:.2f} s ({elapsed / max(summary.rows, 1) * 1000:.1f} ms per row)")
        print(f"peak RSS: {peak_rss_mib():.0f} MiB (before the stage, tokenizer loaded: {rss_before:.0f} MiB)")


if __name__ == "__main__":
    main()
