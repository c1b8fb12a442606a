"""Hypothesis-generated snapshots and intermediate files: valid output or one UserError, never a crash."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memdistill.convert.conversion import convert_file
from memdistill.core import params
from memdistill.core.errors import UserError
from stages.snapshots import SnapshotsConfig
from stages.snapshots import run as run_snapshots

TYPES = st.sampled_from(["Observation", "observation", "OBSERVATION", "Action", "aCtIoN", "Feedback", "feedback", "Note", "", " "])
TEXT = st.one_of(st.text(max_size=40), st.just(""), st.text(alphabet="😀é€ß\u200b\n\t\"\\", max_size=20), st.just("x" * 20_000))
JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=False, allow_infinity=False), TEXT)
NESTED = st.recursive(JSON_LEAF, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)), max_leaves=8)
FEEDBACK_DICT = st.fixed_dictionaries({}, optional={"correct": st.one_of(st.booleans(), TEXT), "reward": st.one_of(st.floats(allow_nan=False), TEXT), "detail": NESTED})
ENTRY = st.one_of(
    st.fixed_dictionaries({"type": TYPES, "content": st.one_of(TEXT, FEEDBACK_DICT)}),
    st.fixed_dictionaries({}, optional={"type": st.one_of(TYPES, st.integers()), "content": NESTED}),
)
LINE = st.one_of(ENTRY.map(lambda e: json.dumps(e, ensure_ascii=False)), st.just(""), st.just("not json {"), st.just("[1, 2]"), TEXT.map(lambda t: t.replace("\n", " ")))

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@FUZZ
@given(lines=st.lists(LINE, max_size=25), strategy=st.sampled_from(["full_memory", "exclude_current", "rolling_window", "failure_focus"]), window_k=st.integers(0, 5))
def test_fuzzed_snapshots_give_output_or_one_clean_error(lines: list[str], strategy: str, window_k: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "ep_000001"
        folder.mkdir()
        (folder / "memory_000001.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        output = Path(tmp) / "prompts.jsonl"
        values = {"checkpoint_dir": str(folder), "strategy": strategy, "window_k": window_k, "max_prompt_tokens": None, "tokenizer": None}
        try:
            run_snapshots(params.validate(SnapshotsConfig, values), output)
        except UserError as exc:
            assert "\n" not in str(exc).strip()
            assert not output.exists()
            return
        rows = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
        assert rows, "a successful run writes at least one prompt"
        for row in rows:
            assert {"sample_idx", "teacher_messages", "student_messages", "metadata"} <= set(row)


LOGPROB = st.one_of(st.floats(max_value=0.0, allow_nan=False, allow_infinity=False), st.just(float("nan")), st.just(0.5), st.just(-math.inf), st.text(max_size=3), st.none())
TOP = st.fixed_dictionaries({"token": st.one_of(st.text(max_size=4), st.just("token_id:17"), st.none()), "logprob": LOGPROB},
                            optional={"token_id": st.one_of(st.integers(-3, 60000), st.none(), st.text(max_size=2)), "bytes": st.one_of(st.lists(st.integers(-1, 300), max_size=3), st.none())})
TOKEN = st.fixed_dictionaries({"token": st.one_of(st.text(max_size=4), st.none()), "logprob": LOGPROB},
                              optional={"token_id": st.one_of(st.integers(-3, 60000), st.none()), "top_logprobs": st.one_of(st.lists(TOP, max_size=4), st.none(), st.just("x"))})
ASSISTANT = st.fixed_dictionaries({"role": st.just("assistant")}, optional={
    "content": st.one_of(st.text(max_size=10), st.none(), st.integers()),
    "token_ids": st.one_of(st.none(), st.lists(st.integers(-2, 60000), max_size=4), st.just("ids")),
    "logprobs": st.one_of(st.none(), st.fixed_dictionaries({"content": st.one_of(st.lists(TOKEN, max_size=4), st.none(), st.just(3))}), st.lists(TOKEN, max_size=2)),
})
MESSAGE = st.one_of(ASSISTANT, st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "tool", 3]), "content": st.one_of(st.text(max_size=10), st.none(), st.integers())}), st.just("msg"))
ROW = st.one_of(
    st.fixed_dictionaries({"messages": st.lists(MESSAGE, max_size=4)}, optional={"system_prompt": st.one_of(st.text(max_size=5), st.none(), st.integers()),
                                                                               "metadata": st.one_of(NESTED, st.just({"teacher": {"model": "smollm2-135m-instruct"}})),
                                                                               "type": st.one_of(st.text(max_size=5), st.none())}),
    st.just({}), st.just([]), st.just(None),
)


def _dump(row: Any) -> str:
    return json.dumps(row, allow_nan=True)


@FUZZ
@given(rows=st.lists(st.one_of(ROW.map(_dump), st.just("{broken"), st.just("")), max_size=6))
def test_fuzzed_intermediate_files_give_output_or_one_clean_error(rows: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "dataset.jsonl"
        source.write_text("\n".join(rows) + "\n", encoding="utf-8")
        output = Path(tmp) / "dataset.parquet"
        try:
            convert_file(source, output, "smollm2-135m-instruct", 0.9)
        except UserError as exc:
            assert "\n" not in str(exc).strip()
            assert not output.exists()
            return
        table = pq.read_table(output)
        assert table.num_rows >= 1
        for record in table.to_pylist():
            for message in record["messages"]:
                top = message["top_logprobs"]
                if top is not None:
                    assert top["shape"][0] == len(message["token_ids"])
