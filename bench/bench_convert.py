"""convert vs the parse floor and a straightforward baseline on synthetic data: time, peak memory, file size,
identical kept ids.

Three runs on the same file, each in its own subprocess: `floor`, pyarrow's JSON reader streaming the file
with convert's explicit schema and nothing else (what any converter that reads JSON with arrow pays);
`memdistill`, convert end to end (loading the tokenizer to the closed parquet file); `baseline`, the
seed's straightforward converter (bench/convert_baseline.py). Linux
carries the parent's RSS at fork into a child's ru_maxrss, so the parent stays small (the synthetic file
is written by a subprocess too) and the child also reports VmHWM, its own high-water mark.

    python -m bench.bench_convert                      # 1M top-k entries, decoded strings
    python -m bench.bench_convert --entries 10000000 --repeat 5   # where conversion, not start-up, dominates
    python -m bench.bench_convert --entries 200000 --bytes
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

MODEL = "smollm2-135m-instruct"


def run_one(kind: str, source: Path, output: Path, min_prob_mass: float) -> dict[str, float]:
    """Convert in this process and report wall/CPU seconds and peak RSS."""
    wall, cpu = time.perf_counter(), time.process_time()
    if kind == "floor":
        parse_only(source)
    elif kind == "memdistill":
        from memdistill.convert.conversion import convert_file
        from memdistill.core.fileio import arrow_without_pandas

        arrow_without_pandas()  # as the convert command starts
        convert_file(source, output, MODEL, min_prob_mass)
    else:
        from bench.convert_baseline import convert_baseline
        from memdistill.core.models import load_tokenizer

        convert_baseline(source, output, load_tokenizer(MODEL), min_prob_mass)
    status = Path("/proc/self/status").read_text() if Path("/proc/self/status").exists() else ""
    hwm = next((int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmHWM:")), float("nan"))
    return {
        "wall_s": time.perf_counter() - wall,
        "cpu_s": time.process_time() - cpu,
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "hwm_mib": hwm,
        "file_mib": output.stat().st_size / 2**20 if output.exists() else 0.0,
    }


def parse_only(source: Path) -> int:
    """Stream `source` through pyarrow's JSON reader with convert's schema and block size; rows read."""
    import pyarrow.json as pj

    from memdistill.convert.records import ARROW_BLOCK_BYTES, INPUT_SCHEMA

    options = pj.ParseOptions(explicit_schema=INPUT_SCHEMA, unexpected_field_behavior="ignore")
    reader = pj.open_json(source, read_options=pj.ReadOptions(block_size=ARROW_BLOCK_BYTES), parse_options=options)
    return sum(batch.num_rows for batch in reader)


def measure(kind: str, source: Path, output: Path, min_prob_mass: float) -> dict[str, float]:
    command = [sys.executable, "-m", "bench.bench_convert", "--child", kind, "--input", str(source), "--output", str(output), "--min-prob-mass", str(min_prob_mass)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def kept_ids(path: Path) -> list[tuple[list[int], list[int], list[int]]]:
    """(token_ids, token_idx, token_id) of every assistant message, in file order."""
    out = []
    for messages in pq.read_table(path, columns=["messages"]).column("messages").to_pylist():
        for message in messages:
            if message["role"] == "assistant" and message["top_logprobs"] is not None:
                top = message["top_logprobs"]
                out.append((list(message["token_ids"]), list(top["token_idx"]), list(top["token_id"])))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=1_000_000, help="top-k entries in the synthetic file")
    parser.add_argument("--bytes", action="store_true", help="give every entry its `bytes` field, as OpenAI servers do")
    parser.add_argument("--input", type=Path, help="an existing intermediate JSONL instead of a synthetic one")
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--min-prob-mass", type=float, default=0.99)
    parser.add_argument("--repeat", type=int, default=1, help="rounds of floor and convert, alternating (the baseline runs once); the fastest is reported")
    parser.add_argument("--child", choices=["floor", "memdistill", "baseline"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        logging.disable(logging.WARNING)
        print(json.dumps(run_one(args.child, args.input, args.output, args.min_prob_mass)))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory(prefix="bench_convert.") as folder:
        work = Path(folder)
        source = args.input
        if source is None:
            source = work / "synthetic.jsonl"
            command = [sys.executable, "-m", "bench.synthetic", "--entries", str(args.entries), "--output", str(source)]
            subprocess.run(command + ([] if args.bytes else ["--no-bytes"]), check=True, capture_output=True)
        # The floor and convert alternate, so a machine whose speed drifts (a shared host) is compared with
        # itself; the baseline, ten times slower, runs once.
        runs: dict[str, list[dict[str, float]]] = {"floor": [], "memdistill": [], "baseline": []}
        for round_ in range(args.repeat):
            for kind in ("floor", "memdistill", "baseline")[: 3 if round_ == 0 else 2]:
                runs[kind].append(measure(kind, source, work / f"{kind}.parquet", args.min_prob_mass))
        results = {kind: min(kind_runs, key=lambda r: r["wall_s"]) for kind, kind_runs in runs.items()}
        identical = kept_ids(work / "baseline.parquet") == kept_ids(work / "memdistill.parquet")
    base, ours, floor = results["baseline"], results["memdistill"], results["floor"]
    print(f"input: {source.name if args.input else f'synthetic, {args.entries:,} top-k entries, bytes={args.bytes}'}; min_prob_mass {args.min_prob_mass}")
    print(f"{'':12} {'wall s':>8} {'cpu s':>8} {'maxrss MiB':>11} {'VmHWM MiB':>10} {'file MiB':>9}")
    for kind, r in results.items():
        print(f"{kind:12} {r['wall_s']:8.2f} {r['cpu_s']:8.2f} {r['peak_mib']:11.1f} {r['hwm_mib']:10.1f} {r['file_mib']:9.2f}")
    print(f"convert / parse floor: {ours['wall_s'] / floor['wall_s']:.2f}x wall")
    print(
        f"speed-up {base['wall_s'] / ours['wall_s']:.1f}x wall, {base['cpu_s'] / ours['cpu_s']:.1f}x cpu; "
        f"peak memory {ours['peak_mib'] / base['peak_mib']:.2f} of baseline; file {ours['file_mib'] / base['file_mib']:.2f} of baseline; "
        f"kept ids identical: {identical}"
    )
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
