"""The generate progress bar: samples done, live tokens/s, and an ETA that moves while a batch runs.

A batched teacher finishes a whole batch at once, so a bar counting finished samples jumps a batch at a
time and its ETA swings by the batch's duration. A teacher that reports the tokens it generates as it
goes (the local teacher, once per decoding step) lets the bar advance in between: a sample in flight
counts as the share of `max_tokens` it has generated, until it finishes and counts as one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from tqdm import tqdm

REDRAW_SECONDS = 0.2
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total_fmt} samples [{elapsed}<{remaining}{postfix}]"


class SampleProgress:
    """tqdm over samples, fed by `tokens(n)` (generated, any thread) and `finished(output_tokens)`."""

    def __init__(self, total: int, max_tokens: int, **tqdm_options: Any) -> None:
        self.max_tokens = max(1, max_tokens)
        self.done = 0
        self.in_flight_tokens = 0  # streamed by the teacher for samples not finished yet
        self.output_tokens = 0
        self.retries = 0
        self.failed = 0
        self._started = self._drawn = time.perf_counter()
        self._lock = threading.Lock()
        options = {"desc": "generate", "dynamic_ncols": True, "smoothing": 0.05, "bar_format": BAR_FORMAT, **tqdm_options}
        self.bar = tqdm(total=total, **options)

    def tokens(self, count: int) -> None:
        """`count` more tokens generated for samples still in flight (called from the teacher's thread)."""
        with self._lock:
            self.in_flight_tokens += count
            self._show()

    def finished(self, output_tokens: int, failed: bool = False, retries: int = 0) -> None:
        """One sample done (answered or failed for good)."""
        with self._lock:
            self.done += 1
            self.output_tokens += output_tokens
            # The streamed count of a finished sample leaves the in-flight share (never below zero: a
            # teacher that streams nothing leaves it at zero).
            self.in_flight_tokens = max(0, self.in_flight_tokens - output_tokens)
            self.failed += int(failed)
            self.retries += retries
            self._show()

    def position(self) -> float:
        """Samples done plus the share of the ones in flight, never past the total nor a whole sample early."""
        partial = min(self.in_flight_tokens / self.max_tokens, max(0, self.bar.total - self.done) - 1e-3)
        return min(float(self.bar.total), self.done + max(0.0, partial))

    def tokens_per_second(self) -> float:
        elapsed = max(1e-9, time.perf_counter() - self._started)
        return (self.output_tokens + self.in_flight_tokens) / elapsed

    def _show(self) -> None:
        self.bar.n = self.position()
        postfix = {"tok/s": f"{self.tokens_per_second():.1f}"}
        if self.retries:
            postfix["retries"] = str(self.retries)
        if self.failed:
            postfix["failed"] = str(self.failed)
        self.bar.set_postfix(postfix, refresh=False)
        now = time.perf_counter()
        # A teacher streams a call per decoding step; redraw at most a few times a second, and at the end.
        if now - self._drawn >= REDRAW_SECONDS or self.done == self.bar.total:
            self._drawn = now
            self.bar.refresh()

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> "SampleProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StepCounter:
    """A transformers streamer (the `put`/`end` protocol of `generate(streamer=...)`) that reports how
    many sequences of the batch got a new token at each decoding step; finished ones (their last token
    was an end-of-sequence id) are padding from then on and are not counted."""

    def __init__(self, report: Callable[[int], None], eos_ids: Iterable[int]) -> None:
        self.report = report
        self.eos_ids = set(eos_ids)
        self._finished: list[bool] | None = None

    def put(self, value: Any) -> None:
        ids = value.tolist() if hasattr(value, "tolist") else list(value)
        if self._finished is None:  # the first call hands over the prompts
            self._finished = [False] * len(ids)
            return
        ids = [row[-1] if isinstance(row, list) else row for row in ids]
        live = [i for i, done in enumerate(self._finished) if not done]
        self.report(len(live))
        for i in live:
            if ids[i] in self.eos_ids:
                self._finished[i] = True

    def end(self) -> None:
        self._finished = None
