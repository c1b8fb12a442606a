"""convert writes, case by case, what it wrote before its columnar engine became the only one: 405 recorded
conversions (the fixtures of test_convert and seeded random files, clean and broken, under several options),
each a digest of the written values or the error message (tests/convert_cases.py)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from .convert_cases import GOLDEN, all_cases, run_case


def test_every_recorded_conversion_is_reproduced(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)
    recorded = json.loads(GOLDEN.read_text(encoding="utf-8"))
    cases = list(all_cases())
    assert {name for name, _, _ in cases} == set(recorded)
    differing = [name for name, records, options in cases if run_case(tmp_path, records, options) != recorded[name]]
    assert differing == []
    # The cases cover what they are for: conversions, rejections, errors.
    assert sum(not value.startswith("error:") for value in recorded.values()) > 150
    assert sum(value.startswith("error:") for value in recorded.values()) > 150
