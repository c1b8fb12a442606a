"""The gain stage's cost next to generate's, in one run on the bundled example with the embedded teacher.

Runs the snapshots stage on the bundled checkpoint (params.yaml's settings), then generate (fresh response
cache, so every prompt is generated) and the gain stage on its output, each as the pipeline runs it
(stages.<name>.run, model load included). Reports wall-clock and CPU seconds of this process for both and
their ratio; target: gain <= 0.25x generate. The student prompts hold no memory and nothing is decoded, so
gain is one short prefill per sample. On a shared machine the wall clock swings with other jobs' load;
the CPU-time ratio is the steadier figure.

    .venv/bin/python -m bench.bench_gain [--params params.yaml] [--max-samples N]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from memdistill.core import params  # noqa: E402
from stages import gain, generate, snapshots  # noqa: E402


def timed(action) -> tuple[float, float]:
    started, cpu_started = time.perf_counter(), time.process_time()
    action()
    return time.perf_counter() - started, time.process_time() - cpu_started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=REPO_ROOT / "params.yaml")
    parser.add_argument("--max-samples", type=int, help="fewer samples of the example (default: all)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-gain-") as scratch:
        folder = Path(scratch)
        flags = {"checkpoint_dir": str(REPO_ROOT / "data/checkpoints/ep_000200")}
        if args.max_samples:
            flags["max_samples"] = args.max_samples
        snapshot_config = params.build(snapshots.SnapshotsConfig, args.params, flags)
        snapshots.run(snapshot_config, folder / "prompts.jsonl")
        generate_config = params.build(generate.GenerateConfig, args.params, {"cache_dir": str(folder / "responses"), "use_cache": False})
        gain_config = params.build(gain.GainConfig, args.params, {})
        generate_wall, generate_cpu = timed(lambda: generate.run(generate_config, folder / "prompts.jsonl", folder / "dataset.jsonl"))
        gain_wall, gain_cpu = timed(lambda: gain.run(gain_config, folder / "prompts.jsonl", folder / "dataset.jsonl", folder / "gain.parquet"))
        samples = sum(1 for _ in (folder / "prompts.jsonl").open())
    print(f"samples: {samples}")
    print(f"{'stage':<9} {'wall s':>8} {'cpu s':>8}")
    print(f"{'generate':<9} {generate_wall:8.2f} {generate_cpu:8.2f}")
    print(f"{'gain':<9} {gain_wall:8.2f} {gain_cpu:8.2f}")
    print(f"gain / generate: wall {gain_wall / generate_wall:.3f}x, cpu {gain_cpu / generate_cpu:.3f}x (target <= 0.25x)")


if __name__ == "__main__":
    main()
