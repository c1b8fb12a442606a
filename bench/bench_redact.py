"""Benchmark redaction: 50 MB of memory entries, and one 50 MB unbroken line (target: each <= 10 s).

    .venv/bin/python -m bench.bench_redact [--mb 50] [--python-re-kb 80]

Redacts with params.yaml's `redact_patterns` (e-mail addresses and API keys):
- realistic: synthetic math-tutor entries (an e-mail address in every Observation) up to `--mb` MB;
- pathological: one entry of `--mb` MB of letters without a break, the shape on which Python's
  backtracking `re` is quadratic (it did not finish in 26 minutes).
For contrast it times Python's `re` with the same patterns on a `--python-re-kb` KB unbroken word.
"""

from __future__ import annotations

import argparse
import os
import re
import time
from pathlib import Path

import yaml

from bench.bench_snapshots import synthetic_entries
from memdistill.snapshots.checkpoint import MemoryEntry, Snapshot, split_samples
from memdistill.snapshots.redact import Redactor
from memdistill.snapshots.rows import redact_snapshot

PATTERNS = yaml.safe_load(Path("params.yaml").read_text(encoding="utf-8"))["snapshots"]["redact_patterns"]


def realistic_snapshot(megabytes: float) -> Snapshot:
    entries: list[MemoryEntry] = []
    size = 0
    batch = 30_000
    while size < megabytes * 1e6:
        for raw in synthetic_entries(batch, seed=len(entries)):
            entry = MemoryEntry(len(entries), raw["type"], raw["content"])
            entries.append(entry)
            size += len(str(raw["content"]))
            if size >= megabytes * 1e6:
                break
    return Snapshot(Path("memory_1.jsonl"), "", tuple(entries), split_samples(tuple(entries)))


def timed(label: str, snapshot: Snapshot, redactor: Redactor) -> None:
    started, cpu = time.perf_counter(), time.process_time()
    _, counts = redact_snapshot(snapshot, redactor)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    chars = sum(len(str(e.content)) for e in snapshot.entries)
    print(
        f"{label:12s}: {chars / 1e6:6.1f} MB in {len(snapshot.entries):,} entries, {sum(counts):,} spans redacted, "
        f"{elapsed:6.2f} s wall, {cpu:6.2f} s CPU"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=50)
    parser.add_argument("--python-re-kb", type=int, default=80)
    args = parser.parse_args()
    redactor = Redactor.compile(PATTERNS)
    print(f"patterns: {PATTERNS}; load average {os.getloadavg()[0]:.1f}")
    timed("realistic", realistic_snapshot(args.mb), redactor)
    line = (MemoryEntry(0, "Observation", "a" * int(args.mb * 1e6)),)
    timed("pathological", Snapshot(Path("memory_1.jsonl"), "", line, split_samples(line)), redactor)
    word = "a" * (args.python_re_kb * 1000)
    started = time.perf_counter()
    for pattern in PATTERNS:
        re.subn(pattern, "[REDACTED]", word)
    python_re = time.perf_counter() - started
    started = time.perf_counter()
    redactor.text(word)
    print(f"{args.python_re_kb} KB unbroken word: Python re {python_re:.2f} s, RE2 {time.perf_counter() - started:.4f} s")


if __name__ == "__main__":
    main()
