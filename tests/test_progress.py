"""The generate progress bar: per-sample advance inside a batch, tokens/s and ETA, quiet teacher loading."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from memdistill.core import models
from memdistill.generate.engine import generate_dataset
from memdistill.generate.progress import SampleProgress, StepCounter
from memdistill.generate.teachers.base import Completion, TeacherRequest
from tests.test_generate import prompts


def test_bar_advances_within_a_batch_and_lands_on_whole_samples() -> None:
    out = io.StringIO()
    progress = SampleProgress(4, max_tokens=10, file=out, mininterval=0)
    progress.tokens(2 * 5)  # a batch of two, five decoding steps
    assert progress.position() == pytest.approx(1.0)
    progress.tokens(2 * 5)
    assert progress.position() == pytest.approx(2.0)
    progress.finished(10)
    progress.finished(10)
    assert progress.position() == 2.0 and progress.in_flight_tokens == 0
    progress.tokens(100)  # however many tokens stream, the bar is full only when every sample is done
    assert 3.99 < progress.position() < 4.0
    progress.finished(50)
    progress.finished(0, failed=True, retries=2)
    progress.close()
    assert progress.position() == 4.0
    text = out.getvalue()
    assert "4.0/4 samples" in text and "tok/s=" in text and "failed=1" in text and "retries=2" in text
    # An ETA is shown while samples remain ("<" then a time, not "?").
    assert "<00:" in text


def test_step_counter_counts_only_sequences_still_generating() -> None:
    counts: list[int] = []
    counter = StepCounter(counts.append, eos_ids={2})
    counter.put([[5, 6, 7], [8, 9, 10]])  # the prompts
    counter.put([4, 2])  # the second sequence ends here
    counter.put([4, 0])  # padding after its end is not a token
    counter.put([2, 0])
    assert counts == [2, 1, 1]


class StreamingTeacher:
    """A teacher that, like the local one, reports tokens per step and answers a batch at once."""

    on_tokens = None

    def describe(self) -> dict:
        return {"backend": "fake", "model": "m", "max_tokens": 4}

    async def stream(self, requests):  # type: ignore[no-untyped-def]
        self.seen_hook = self.on_tokens
        for _ in range(3):
            self.on_tokens(len(requests))
        for request in requests:
            yield Completion(request.sample_idx, "abc", [1, 2, 3], [], "length", 5, 3, 0.1)

    async def aclose(self) -> None:
        return None


def test_generate_hands_its_bar_to_a_streaming_teacher(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    teacher = StreamingTeacher()
    summary = generate_dataset(prompts(3), teacher, tmp_path / "out.jsonl", tmp_path / "store")
    assert summary.output_tokens == 9
    assert teacher.seen_hook is not None and teacher.on_tokens is None  # handed over, then taken back
    err = capsys.readouterr().err
    assert "3.0/3 samples" in err and "tok/s=" in err


def test_teacher_loading_draws_no_bars_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoModelForCausalLM
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    seen: dict[str, object] = {}

    def fake_load(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen["bars"] = hf_logging.is_progress_bar_enabled()
        seen["gguf_bar_disabled"] = gguf_utils.tqdm([1], file=io.StringIO()).disable
        return type("Model", (), {"eval": lambda self: None})()

    monkeypatch.setattr(models, "_materialize", lambda kind: Path("/nonexistent"))
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", fake_load)
    enabled_before = hf_logging.is_progress_bar_enabled()
    models.load_embedded_model()
    assert seen == {"bars": False, "gguf_bar_disabled": True}
    assert hf_logging.is_progress_bar_enabled() == enabled_before
    assert gguf_utils.tqdm([1], file=io.StringIO()).disable is False


def test_local_teacher_reports_every_generated_token() -> None:
    """The embedded teacher streams one report per decoding step: they add up to its output tokens."""
    from memdistill.generate.teachers.base import SamplingParams
    from memdistill.generate.teachers.local import LocalTeacher

    teacher = LocalTeacher("smollm2-135m-instruct", SamplingParams(max_tokens=5, top_logprobs=2), batch_size=2)
    reports: list[int] = []
    teacher.on_tokens = reports.append
    requests = [TeacherRequest(0, [{"role": "user", "content": "Say yes."}]), TeacherRequest(1, [{"role": "user", "content": "Count to ten."}])]
    completions = teacher.generate_batch(requests)
    assert sum(reports) == sum(c.output_tokens for c in completions)
    assert len(reports) == max(c.output_tokens for c in completions) and all(1 <= r <= 2 for r in reports)
