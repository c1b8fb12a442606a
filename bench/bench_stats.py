"""Benchmark: the stats stage against convert (and `inspect`) over the 1M-entry synthetic bench file.

Makes the synthetic JSONL with `bench.synthetic` (kept in --workdir and reused on later runs), then,
side by side in one run and in fresh processes (wall time and peak memory): `memdistill convert` (which
also writes the figures stats reads), `memdistill stats` reading those figures, and `memdistill stats`
without them (it parses the JSONL and the parquet's entries itself, as it did before convert counted
them); then the halves of stats in process, and `memdistill inspect`.

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

from memdistill.convert.conversion import convert_file
from memdistill.convert.figures import FiguresCollector, figures_path
from memdistill.stats import file_figures as stats

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


def prepare(workdir: Path, entries: int) -> Path:
    """The synthetic JSONL (made once, reused)."""
    workdir.mkdir(parents=True, exist_ok=True)
    jsonl = workdir / f"synthetic-{entries}.jsonl"
    if not jsonl.is_file():
        log.info("writing %s", jsonl)
        subprocess.run([sys.executable, "-m", "bench.synthetic", "--entries", str(entries), "--output", str(jsonl)], check=True)
    return jsonl


def _median(runs: list[Run]) -> str:
    walls = [run.wall for run in runs]
    return (f"median {statistics.median(walls):.2f} s  (runs {', '.join(f'{w:.2f}' for w in walls)}), peak memory "
            f"{max(r.anon_mib for r in runs):.0f} MiB (+ {max(r.file_mib for r in runs):.0f} MiB of mapped file pages)")


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

    jsonl = prepare(args.workdir, args.entries)
    parquet = args.workdir / f"synthetic-{args.entries}-{args.min_prob_mass}.parquet"
    figures = figures_path(parquet)
    out = args.workdir / "out"
    convert_args = [
        "convert", "--input", str(jsonl), "--output", str(parquet), "--model", "smollm2-135m-instruct",
        "--min-prob-mass", str(args.min_prob_mass), "--figures", str(figures),
    ]  # fmt: skip
    stats_args = [
        "stats", "--jsonl", str(jsonl), "--parquet", str(parquet), "--min-prob-mass", str(args.min_prob_mass),
        "--metrics", str(out / "stats.json"), "--plots-dir", str(out / "plots"), "--summary", str(out / "summary.md"),
    ]  # fmt: skip
    # Interleaved, so a burst of load on a shared machine hits every variant alike.
    convert_runs, runs, bare_runs, reading_runs = [], [], [], []
    for _ in range(args.repeat):
        convert_runs.append(timed_cli(convert_args))
        runs.append(timed_cli([*stats_args, "--figures", str(figures)]))
        # Metrics only: no plot files, no summary, so nothing drawn (what drawing the SVG plots costs).
        bare_runs.append(timed_cli([*stats_args[:-4], "--figures", str(figures)]))
        reading_runs.append(timed_cli([*stats_args, "--figures", str(args.workdir / "absent.figures.json")]))
    jsonl_seconds = in_process(stats.jsonl_figures, jsonl, args.repeat)
    parquet_seconds = in_process(stats.parquet_figures, parquet, args.repeat)
    thresholds = [*stats.DEFAULT_MASS_THRESHOLDS]
    # What counting the figures costs convert: the same conversion in process, without and with them.
    scratch = args.workdir / "scratch.parquet"
    plain = in_process(lambda path: convert_file(path, scratch, "smollm2-135m-instruct", args.min_prob_mass), jsonl, args.repeat)
    counted = in_process(
        lambda path: convert_file(path, scratch, "smollm2-135m-instruct", args.min_prob_mass,
                                  figures=FiguresCollector(args.min_prob_mass, thresholds)), jsonl, args.repeat,
    )  # fmt: skip
    figures_seconds = in_process(lambda path: stats.figures_from_convert(path, jsonl, parquet, thresholds), figures, args.repeat)
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
    print(f"  figures  {figures.stat().st_size / 1e3:8.1f} kB  {figures}")
    convert_median = statistics.median(r.wall for r in convert_runs)
    stats_median = statistics.median(r.wall for r in runs)
    reading_median = statistics.median(r.wall for r in reading_runs)
    print(f"  memdistill convert, end to end:                 {_median(convert_runs)}")
    print(f"  memdistill stats, end to end (convert's figures): {_median(runs)}")
    print(f"  memdistill stats, metrics only (no plots drawn): {_median(bare_runs)}")
    print(f"  memdistill stats, end to end (reading the files): {_median(reading_runs)}")
    bare_median = statistics.median(r.wall for r in bare_runs)
    print(f"  stats / convert: {stats_median / convert_median:.2f} with the figures ({bare_median / convert_median:.2f} without drawing"
          f" the plots), {reading_median / convert_median:.2f} reading the files")
    print(f"  convert in process: {plain:.2f} s without the figures, {counted:.2f} s counting them")
    print(f"    figures + parquet metadata and footer:  {figures_seconds:.2f} s in process")
    print(f"    JSONL pass (mass curve, samples):       {jsonl_seconds:.2f} s in process")
    print(f"    parquet pass (kept, mass, -1 ids):      {parquet_seconds:.2f} s in process")
    for name, run in inspect_runs.items():
        print(f"  memdistill {name}: {run}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
