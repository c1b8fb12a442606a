"""Benchmark: the stats stage (and `inspect`) over the 1M-entry synthetic bench file.

Makes the synthetic JSONL with `bench.synthetic` and converts it with `memdistill convert` (both kept in
--workdir and reused on later runs), then times `memdistill stats` end to end in fresh processes
(wall time and peak memory), the two halves of stats in process, and `memdistill inspect`.

    python -m bench.bench_stats                     # 1,000,000 top-k entries (50,000 tokens x 20)
    python -m bench.bench_stats --entries 5000000   # memory stays flat: everything streams
"""

from __future__ import annotations

import argparse
import logging
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from memdistill import stats

log = logging.getLogger(__name__)

# Runs the CLI in a child that samples its own /proc/self/status (Linux): peak anonymous memory (what
# the process allocates) and peak file-backed pages (polars memory-maps the JSONL; the kernel can drop
# those pages at will, so they are reported apart).
CHILD = """
import sys, threading, time
from memdistill.cli import main
peak = {"RssAnon": 0, "RssFile": 0}
running = True
def poll():
    while running:
        with open("/proc/self/status") as handle:
            fields = dict(line.split(":", 1) for line in handle)
        for key in peak:
            peak[key] = max(peak[key], int(fields[key].split()[0]))
        time.sleep(0.02)
thread = threading.Thread(target=poll, daemon=True)
thread.start()
code = main(sys.argv[1:])
running = False
thread.join()
print("peak", peak["RssAnon"], peak["RssFile"], file=sys.stderr)
sys.exit(code)
"""


@dataclass(frozen=True)
class Run:
    wall: float
    anon_mib: float  # peak anonymous resident memory
    file_mib: float  # peak file-backed resident pages (memory-mapped input)

    def __str__(self) -> str:
        return f"{self.wall:.2f} s, peak memory {self.anon_mib:.0f} MiB (+ {self.file_mib:.0f} MiB of mapped file pages)"


def timed_cli(args: list[str]) -> Run:
    """Wall time and peak memory of one `memdistill ARGS` in a fresh process."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"memdistill {' '.join(args)} failed:\n{result.stderr}")
    _, anon, mapped = next(line.split() for line in reversed(result.stderr.splitlines()) if line.startswith("peak "))
    return Run(wall, int(anon) / 1024, int(mapped) / 1024)


def prepare(workdir: Path, entries: int, min_prob_mass: float) -> tuple[Path, Path, float | None]:
    """The synthetic JSONL and its parquet; convert's wall time when it had to run."""
    workdir.mkdir(parents=True, exist_ok=True)
    jsonl = workdir / f"synthetic-{entries}.jsonl"
    parquet = workdir / f"synthetic-{entries}-{min_prob_mass}.parquet"
    if not jsonl.is_file():
        log.info("writing %s", jsonl)
        subprocess.run([sys.executable, "-m", "bench.synthetic", "--entries", str(entries), "--output", str(jsonl)], check=True)
    convert_seconds = None
    if not parquet.is_file():
        log.info("converting to %s", parquet)
        convert_seconds = timed_cli(
            ["convert", "--input", str(jsonl), "--output", str(parquet), "--model", "smollm2-135m-instruct", "--min-prob-mass", str(min_prob_mass)]
        ).wall
    return jsonl, parquet, convert_seconds


def in_process(function, path: Path, repeat: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function(path)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=1_000_000, help="top-k entries in the synthetic JSONL")
    parser.add_argument("--min-prob-mass", type=float, default=0.99)
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (the median is printed)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/memdistill-bench-stats"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    jsonl, parquet, convert_seconds = prepare(args.workdir, args.entries, args.min_prob_mass)
    out = args.workdir / "out"
    stats_args = [
        "stats", "--jsonl", str(jsonl), "--parquet", str(parquet), "--min-prob-mass", str(args.min_prob_mass),
        "--metrics", str(out / "stats.json"), "--plots-dir", str(out / "plots"), "--summary", str(out / "summary.md"),
    ]  # fmt: skip
    runs = [timed_cli(stats_args) for _ in range(args.repeat)]
    jsonl_seconds = in_process(stats.jsonl_figures, jsonl, args.repeat)
    parquet_seconds = in_process(stats.parquet_figures, parquet, args.repeat)
    samples = stats.parquet_figures(parquet).samples.height
    inspect_runs = {
        "inspect parquet --summary": timed_cli(["inspect", str(parquet), "--summary"]),
        "inspect jsonl --summary": timed_cli(["inspect", str(jsonl), "--summary"]),
        f"inspect parquet --sample {samples - 1} --no-decode": timed_cli(["inspect", str(parquet), "--sample", str(samples - 1), "--no-decode"]),
        f"inspect jsonl --sample {samples - 1}": timed_cli(["inspect", str(jsonl), "--sample", str(samples - 1)]),
    }

    print(f"\nstats benchmark: {args.entries:,} top-k entries, {samples} records, min_prob_mass {args.min_prob_mass}")
    print(f"  JSONL    {jsonl.stat().st_size / 1e6:8.1f} MB  {jsonl}")
    print(f"  parquet  {parquet.stat().st_size / 1e6:8.1f} MB  {parquet}")
    if convert_seconds is not None:
        print(f"  memdistill convert (once, to make the parquet): {convert_seconds:.2f} s")
    walls = [run.wall for run in runs]
    print(f"  memdistill stats, end to end:  median {statistics.median(walls):.2f} s  (runs {', '.join(f'{w:.2f}' for w in walls)}),"
          f" peak memory {max(r.anon_mib for r in runs):.0f} MiB (+ {max(r.file_mib for r in runs):.0f} MiB of mapped file pages)")
    print(f"    JSONL pass (mass curve, samples):  {jsonl_seconds:.2f} s in process")
    print(f"    parquet pass (kept, mass, -1 ids): {parquet_seconds:.2f} s in process")
    for name, run in inspect_runs.items():
        print(f"  memdistill {name}: {run}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
