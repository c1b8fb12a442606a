"""Scaling out on Ray: convert with 1 and 2 Ray workers, and Ray's fixed overhead on the bundled example.

    python -m bench.bench_ray scaling --entries 4000000 --shards 4   # convert, 1 vs 2 workers
    python -m bench.bench_ray overhead --samples 16 --repeat 3        # bundled example: local vs ray

`scaling` writes the synthetic file once (token strings, no ids: convert's heaviest path), then for each
worker count starts a local Ray instance with that many CPUs, lets it settle, and times the convert
stage on it (executor ray, the same `--shards` units every time), so the figure is the work's scaling,
not Ray's start-up. A local single-process convert of the same file is the reference.

`overhead` runs the snapshots stage on the bundled checkpoint, generates its dataset once with the
embedded teacher, then times the convert stage with executor local and with executor ray starting its
own local instance (what `dvc repro` pays), and generate on ray against local from an empty cache
(`--generate`; slow on a busy 2-core machine). The difference is Ray's fixed cost.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m-instruct"


def _convert(source: Path, output: Path, **options: object) -> float:
    from stages import convert as convert_stage

    started = time.perf_counter()
    convert_stage.run(convert_stage.ConvertConfig(model=MODEL, **options), source, output)
    return time.perf_counter() - started


def _warm_worker() -> int:
    from memdistill.convert.token_ids import load_text_tokenizer

    load_text_tokenizer(MODEL)
    time.sleep(0.5)  # hold the CPU so the next warm-up call lands on another worker
    return os.getpid()


def scaling(entries: int, shards: int, workers: list[int], repeat: int) -> None:
    import ray

    with tempfile.TemporaryDirectory(prefix="bench_ray.") as folder:
        work = Path(folder)
        source = work / "synthetic.jsonl"
        subprocess.run([sys.executable, "-m", "bench.synthetic", "--entries", str(entries), "--output", str(source)],
                       check=True, capture_output=True, cwd=REPO)
        size_mib = source.stat().st_size / 2**20
        local = min(_convert(source, work / "local.parquet") for _ in range(repeat))
        rows = [("local, 1 process", local)]
        for count in workers:
            ray.init(num_cpus=count, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1",
                     runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
            try:
                # Start every worker process, with its imports and the tokenizer, before timing.
                warm = ray.remote(num_cpus=1)(_warm_worker)
                ray.get([warm.remote() for _ in range(count)])
                best = min(_convert(source, work / f"ray{count}.parquet", executor="ray", shards=shards, num_workers=count)
                           for _ in range(repeat))
            finally:
                ray.shutdown()
            rows.append((f"ray, {count} worker{'s' if count > 1 else ''}", best))
    print(f"convert: synthetic {entries:,} top-k entries ({size_mib:.0f} MiB JSONL), {shards} shards, "
          f"{os.cpu_count()} CPUs, load average before {os.getloadavg()[0]:.1f}")
    base = dict(rows).get("ray, 1 worker")
    for name, seconds in rows:
        ratio = f"{base / seconds:.2f}x vs 1 worker" if base and name.startswith("ray") else ""
        print(f"  {name:18} {seconds:8.2f} s  {ratio}")


def ray_start_stop() -> float:
    """Seconds to start a local 2-CPU Ray instance, run one trivial task on each CPU, and stop it."""
    import ray

    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        task = ray.remote(num_cpus=1)(lambda: os.getpid())
        ray.get([task.remote() for _ in range(2)])
    finally:
        ray.shutdown()
    return time.perf_counter() - started


def overhead(samples: int | None, with_generate: bool, repeat: int) -> None:
    from stages import generate as generate_stage

    with tempfile.TemporaryDirectory(prefix="bench_ray.") as folder:
        work = Path(folder)
        prompts = work / "prompts.jsonl"
        command = [str(Path(sys.executable).with_name("memdistill")), "snapshots", "--params", str(REPO / "params.yaml"),
                   "--checkpoint-dir", str(REPO / "data/checkpoints/ep_000200"), "--output", str(prompts)]
        if samples:
            command += ["--max-samples", str(samples)]
        subprocess.run(command, check=True, capture_output=True, cwd=REPO)
        count = sum(1 for _ in prompts.open())
        base = dict(max_tokens=16, top_logprobs=20, batch_size=8)
        started = time.perf_counter()
        generate_stage.run(generate_stage.GenerateConfig(**base, cache_dir=str(work / "cache-local")), prompts, work / "local.jsonl")
        generate_local = time.perf_counter() - started
        lines = [f"bundled example: {count} samples, 16 tokens each, top-20"]
        if with_generate:
            started = time.perf_counter()
            generate_stage.run(generate_stage.GenerateConfig(**base, executor="ray", num_workers=2, cache_dir=str(work / "cache-ray")),
                               prompts, work / "ray.jsonl")
            generate_ray = time.perf_counter() - started
            lines.append(f"  generate  local {generate_local:7.2f} s   ray (2 actors, cold start) {generate_ray:7.2f} s   "
                         f"difference {generate_ray - generate_local:+.2f} s")
        convert_local = min(_convert(work / "local.jsonl", work / "local.parquet") for _ in range(repeat))
        convert_ray = min(_convert(work / "local.jsonl", work / "ray.parquet", executor="ray", num_workers=2) for _ in range(repeat))
        lines.append(f"  convert   local {convert_local:7.2f} s   ray (2 workers, cold start) {convert_ray:7.2f} s   "
                     f"difference {convert_ray - convert_local:+.2f} s")
        lines.append(f"  of which Ray itself: start a local instance, one task per CPU, stop: {min(ray_start_stop() for _ in range(repeat)):.2f} s")
        lines.append(f"  (best of {repeat}; load average {os.getloadavg()[0]:.1f})")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    scale = commands.add_parser("scaling", help="convert with 1 and 2 Ray workers")
    scale.add_argument("--entries", type=int, default=4_000_000)
    scale.add_argument("--shards", type=int, default=4)
    scale.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    scale.add_argument("--repeat", type=int, default=1, help="runs per setting; the fastest is reported")
    fixed = commands.add_parser("overhead", help="Ray's fixed cost on the bundled example")
    fixed.add_argument("--samples", type=int, help="only the first N samples of the example")
    fixed.add_argument("--generate", action="store_true", help="also time generate on ray against local")
    fixed.add_argument("--repeat", type=int, default=1, help="convert runs per executor; the fastest is reported")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.command == "scaling":
        scaling(args.entries, args.shards, args.workers, args.repeat)
    else:
        overhead(args.samples, args.generate, args.repeat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
