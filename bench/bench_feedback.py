"""Feedback reading: how long the default reader takes per sample, on short and on log-sized feedback.

Reads (1) every Feedback of the synthetic 20,000-entry snapshot of bench_snapshots (math-tutor dicts and
one-line texts), (2) a 25 KB `pytest -v` log that ends in a summary line, and (3) a 33 KB log with no
outcome words at all (every rule runs and none decides). Prints the time per read and the verdicts.

    .venv/bin/python -m bench.bench_feedback
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

from bench.bench_snapshots import synthetic_entries
from memdistill.snapshots.feedback import FeedbackReader

PYTEST_LOG = "".join(f"PASSED tests/test_parser.py::test_case_{i}\n" for i in range(800)) + "==== 800 passed in 2.13s ===="
PLAIN_LOG = "".join(f"step {i}: wrote chunk {i % 17} of the index\n" for i in range(1500))


def seconds_per_read(reader: FeedbackReader, contents: Sequence[Any], repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        for content in contents:
            reader.read(content)
    return (time.perf_counter() - start) / (repeat * len(contents))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=20_000, help="synthetic snapshot size (default 20000)")
    parser.add_argument("--repeat", type=int, default=3, help="reads of each input (default 3)")
    args = parser.parse_args()
    reader = FeedbackReader.from_params()
    feedbacks = [entry["content"] for entry in synthetic_entries(args.entries) if entry["type"] == "Feedback"]
    per_read = seconds_per_read(reader, feedbacks, args.repeat)
    failed = sum(reader.failed(content) for content in feedbacks)
    print(f"synthetic snapshot: {len(feedbacks)} feedbacks ({failed} failed) in {per_read * len(feedbacks):.2f} s, "
          f"{per_read * 1e6:.0f} µs per read")
    for name, log in (("pytest log", PYTEST_LOG), ("plain log", PLAIN_LOG)):
        verdict = reader.read(log)
        print(f"{name}: {len(log) / 1024:.0f} KB in {seconds_per_read(reader, [log], args.repeat) * 1e3:.1f} ms "
              f"({verdict.rule}, failed={verdict.failed})")


if __name__ == "__main__":
    main()
