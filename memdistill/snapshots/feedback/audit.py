"""`memdistill feedback`: a snapshot's distinct feedback forms with the verdict and rule the reader gives
each, so a user sees at a glance how the failure reading treats their agent's feedback before running
anything (and which pattern or key to add when a form is misread).

Feedback is redacted first, as the snapshots stage does, so the table shows what the stage reads. Forms
are grouped by their text with whitespace collapsed and numbers masked ("expected 9" and "expected 2.5" are
one form), and by verdict and rule, so two texts the reader tells apart ("0 failed" and "2 failed") stay
two rows.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from memdistill.snapshots.checkpoint import Snapshot, find_snapshot, load_snapshot
from memdistill.snapshots.feedback.reader import FeedbackReader
from memdistill.snapshots.feedback.verdict import Verdict
from memdistill.snapshots.prompts import render_content
from memdistill.snapshots.redact import Redactor

NO_FEEDBACK = "(no feedback)"
RULE_WIDTH = 44  # a pattern rule's first characters name it well enough
_NUMBERS = re.compile(r"\d+(?:[.,]\d+)*")


@dataclass
class FeedbackForm:
    """One distinct feedback form: its first text, the reader's verdict and the samples that have it."""

    text: str
    verdict: Verdict
    samples: list[int] = field(default_factory=list)

    @property
    def verdict_word(self) -> str:
        return {True: "failed", False: "passed", None: "unknown"}[self.verdict.failed]


def feedback_forms(snapshot: Snapshot, reader: FeedbackReader, redactor: Redactor) -> list[FeedbackForm]:
    """The snapshot's feedback forms, the most frequent first (then in order of first appearance)."""
    forms: dict[tuple[str, bool | None, str], FeedbackForm] = {}
    for sample in snapshot.samples:
        content = redactor.content(sample.feedback.content)[0] if sample.feedback else None
        verdict = reader.read(content)
        text = " ".join(render_content(content).split()) if content is not None else NO_FEEDBACK
        key = (_NUMBERS.sub("#", text), verdict.failed, verdict.rule)
        forms.setdefault(key, FeedbackForm(text, verdict)).samples.append(sample.sample_idx)
    return sorted(forms.values(), key=lambda form: (-len(form.samples), form.samples[0]))


def summary_line(snapshot: Path, forms: Sequence[FeedbackForm]) -> str:
    """'memory_10.jsonl: 115 samples, 32 feedback forms: 71 failed, 40 passed, 4 unknown (2 without feedback)'."""
    counts = {word: sum(len(f.samples) for f in forms if f.verdict_word == word) for word in ("failed", "passed", "unknown")}
    missing = sum(len(f.samples) for f in forms if f.verdict.rule == "missing")
    total = sum(counts.values())
    return (
        f"{snapshot.name}: {total} samples, {len(forms)} feedback forms: {counts['failed']} failed, {counts['passed']} passed, "
        f"{counts['unknown']} unknown ({missing} without feedback)"
    )


def _shorten(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[: max(1, max_chars - 1)] + "…"


def render_forms(forms: Sequence[FeedbackForm], max_chars: int = 80, width: int = 120) -> str:
    """The forms as a table: samples, verdict, rule, first sample number, feedback (shortened to max_chars)."""
    table = Table(show_edge=False, pad_edge=False, expand=False)
    table.add_column("samples", justify="right", no_wrap=True)
    table.add_column("verdict", no_wrap=True)
    # One line per form: a long pattern or text ends in an ellipsis (metadata.feedback.rule has it whole).
    rule_width = min(RULE_WIDTH, max((len(form.verdict.rule) for form in forms), default=4))
    table.add_column("rule", no_wrap=True, overflow="ellipsis", width=max(4, rule_width))
    table.add_column("first", justify="right", no_wrap=True)
    # Rich shrinks the narrow columns to nothing rather than cut a long unwrappable one: give it what is left.
    table.add_column("feedback", no_wrap=True, overflow="ellipsis", max_width=max(12, width - rule_width - 32))
    for form in forms:
        table.add_row(str(len(form.samples)), form.verdict_word, form.verdict.rule, str(form.samples[0]), _shorten(form.text, max_chars))
    console = Console(file=io.StringIO(), width=width, no_color=True, highlight=False, emoji=False, markup=False)
    console.print(table)
    return console.file.getvalue().rstrip("\n")


def audit_feedback(
    checkpoint_dir: str | Path, snapshot_name: str, reader: FeedbackReader, redact_patterns: list[str] | None,
    max_chars: int = 80, width: int = 120,
) -> str:
    """The table of the snapshot's feedback forms and the summary line under it."""
    path = find_snapshot(checkpoint_dir, snapshot_name)
    forms = feedback_forms(load_snapshot(path), reader, Redactor.compile(redact_patterns))
    return f"{render_forms(forms, max_chars, width)}\n{summary_line(path, forms)}"
