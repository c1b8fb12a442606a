"""The validation split: whole observations, a pure function of the observation and a seed, both files or neither."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from memdistill.convert.cartridges_io import OutMessage
from memdistill.convert.split import in_validation, observation_digest, observation_text
from memdistill.convert.token_ids import load_text_tokenizer
from memdistill.core.errors import UserError
from memdistill.snapshots.prompts import student_messages, teacher_messages
from stages import convert as convert_stage

from .conftest import write_jsonl

MODEL = "smollm2-135m-instruct"
IM_END = 2


@pytest.fixture(scope="module")
def four() -> int:
    return load_text_tokenizer(MODEL).vocab["4"]


def sample(observation: str, index: int, four: int, *, teacher_view: bool = False, memory: tuple[str, ...] = ()) -> dict:
    """One generate record answering `observation` (under the teacher view, with `memory` in its prompt)."""
    messages = teacher_messages("Agent.", list(memory), observation) if teacher_view else student_messages("Agent.", observation)
    top = [{"token": "4", "logprob": -0.01, "token_id": four}, {"token": "<|im_end|>", "logprob": -5.0, "token_id": IM_END}]
    end = [{"token": "<|im_end|>", "logprob": -0.001, "token_id": IM_END}]
    return {
        "messages": [*({"role": m.role, "content": m.content} for m in messages),
                     {"role": "assistant", "content": "4", "token_ids": [four, IM_END],
                      "logprobs": {"content": [{**top[0], "top_logprobs": top}, {**end[0], "top_logprobs": end}]}}],
        "system_prompt": "Agent.",
        "metadata": {"sample_idx": index, "finish_reason": "stop", "teacher": {"backend": "local", "model": MODEL}},
        "type": "memory_distillation",
    }


def observations(count: int, start: int = 0) -> list[str]:
    return [f"Task {i}: add {i} and 2." for i in range(start, start + count)]


def split_of(train: Path, validation: Path) -> dict[str, str]:
    """observation -> split, over the rows of both files (every row of one observation must agree)."""
    where: dict[str, str] = {}
    for name, path in (("train", train), ("validation", validation)):
        for row in pd.read_parquet(path).to_dict(orient="records"):
            user = next(m["content"] for m in row["messages"] if m["role"] == "user")
            observation = observation_text(user)
            assert where.setdefault(observation, name) == name, f"{observation!r} in both splits"
    return where


def convert(tmp_path: Path, records: list[dict], name: str, **config) -> tuple[Path, Path]:
    source = write_jsonl(tmp_path / f"{name}.jsonl", records)
    train, validation = tmp_path / f"{name}.parquet", tmp_path / f"{name}.validation.parquet"
    settings = {"model": MODEL, "validation_fraction": 0.25, **config}
    convert_stage.run(convert_stage.ConvertConfig(**settings), source, train, validation=validation)
    return train, validation


# ------------------------------------------------------------------------------------------------ pure


def test_the_teacher_view_and_the_student_view_name_the_same_observation() -> None:
    observation = "Sort [3, 1, 2].\n\nHere is the current observation:\n\ntricky"
    student = student_messages("Agent.", observation)
    for memory in ([], ["OBSERVATION: x", "ACTION: y", "FEEDBACK: Here is the current observation:"]):
        teacher = teacher_messages("Agent.", memory, observation)
        assert observation_digest(teacher) == observation_digest(student)
    other = teacher_messages("Agent.", [], "Sort [3, 2, 1].")
    assert observation_digest(other) != observation_digest(student)


@given(st.binary(min_size=32, max_size=32), st.floats(0, 1), st.floats(0, 1), st.integers(-(2**63), 2**63 - 1))
def test_a_larger_fraction_only_adds_to_validation(digest: bytes, low: float, high: float, seed: int) -> None:
    low, high = sorted((low, high))
    assert in_validation(digest, low, seed) <= in_validation(digest, high, seed)
    assert in_validation(digest, low, seed) == in_validation(digest, low, seed)
    assert not in_validation(digest, 0.0, seed)


def test_the_share_held_out_follows_the_fraction() -> None:
    digests = [observation_digest([OutMessage("user", f"observation {i}", None)]) for i in range(4000)]
    share = sum(in_validation(d, 0.1, 0) for d in digests) / len(digests)
    assert 0.08 < share < 0.12
    assert [in_validation(d, 0.1, 0) for d in digests] != [in_validation(d, 0.1, 1) for d in digests]


# ---------------------------------------------------------------------------------------------- convert


def test_every_row_of_an_observation_lands_in_one_split(tmp_path: Path, four: int) -> None:
    # Three memory views per observation (random_sampling), and the teacher view beside the student view.
    records = []
    for i, observation in enumerate(observations(40)):
        records.append(sample(observation, 3 * i, four))
        records.append(sample(observation, 3 * i + 1, four, teacher_view=True, memory=(f"OBSERVATION: past {i}",)))
        records.append(sample(observation, 3 * i + 2, four, teacher_view=True))
    train, validation = convert(tmp_path, records, "views")
    where = split_of(train, validation)
    assert len(where) == 40 and 0 < list(where.values()).count("validation") < 40
    held = pq.read_table(validation).num_rows
    assert held == 3 * list(where.values()).count("validation")
    assert pq.read_table(train).num_rows + held == 120


def test_adding_samples_never_moves_an_observation(tmp_path: Path, four: int) -> None:
    first = [sample(o, i, four) for i, o in enumerate(observations(40))]
    more = first + [sample(o, 40 + i, four) for i, o in enumerate(observations(60, start=40))]
    before = split_of(*convert(tmp_path, first, "before"))
    after = split_of(*convert(tmp_path, more, "after"))
    assert {o: after[o] for o in before} == before
    assert "validation" in before.values() and len(after) == 100


def test_too_few_observations_keep_everything_in_train_and_say_so(tmp_path: Path, four: int, caplog) -> None:
    records = [sample(o, i, four) for i, o in enumerate(observations(3))]
    with caplog.at_level(logging.WARNING):
        train, validation = convert(tmp_path, records, "small", validation_fraction=0.1)
    assert pq.read_table(train).num_rows == 3
    assert pq.read_table(validation).num_rows == 0  # still written: a pipeline's declared output
    warned = [r.getMessage() for r in caplog.records if "too few" in r.getMessage()]
    assert len(warned) == 1 and "3 observation(s)" in warned[0] and "\n" not in warned[0]
    assert [row["metadata"]["sample_idx"] for row in pd.read_parquet(train).to_dict(orient="records")] == [0, 1, 2]


def test_a_split_the_hash_leaves_empty_rejoins_train_in_input_order(tmp_path: Path, four: int) -> None:
    # 12 observations at 0.1: at least one expected; with seed 1 the hash happens to hold out none or some.
    records = [sample(o, i, four) for i, o in enumerate(observations(12))]
    for seed in range(8):
        train, validation = convert(tmp_path, records, f"seed{seed}", validation_fraction=0.1, validation_seed=seed)
        held = pq.read_table(validation).num_rows
        kept = [row["metadata"]["sample_idx"] for row in pd.read_parquet(train).to_dict(orient="records")]
        if held == 0:
            assert kept == list(range(12))
        else:
            assert len(kept) + held == 12 and kept == sorted(kept)


def test_fraction_zero_writes_no_validation_file_unless_named(tmp_path: Path, four: int) -> None:
    records = [sample(o, i, four) for i, o in enumerate(observations(20))]
    source = write_jsonl(tmp_path / "in.jsonl", records)
    convert_stage.run(convert_stage.ConvertConfig(model=MODEL, validation_fraction=0), source, tmp_path / "out.parquet")
    assert not (tmp_path / "out.validation.parquet").exists()
    train, validation = convert(tmp_path, records, "named", validation_fraction=0)
    assert pq.read_table(train).num_rows == 20 and pq.read_table(validation).num_rows == 0


def test_two_runs_write_the_same_bytes(tmp_path: Path, four: int) -> None:
    records = [sample(o, i, four) for i, o in enumerate(observations(40))]
    first = [p.read_bytes() for p in convert(tmp_path, records, "run")]
    second = [p.read_bytes() for p in convert(tmp_path, records, "run")]
    assert first == second and pq.read_table(pa_buffer(first[1])).num_rows > 0


def pa_buffer(data: bytes):
    import pyarrow as pa

    return pa.BufferReader(data)


@pytest.mark.parametrize("shards", [3])
def test_sharded_convert_writes_both_directories_or_neither(tmp_path: Path, four: int, shards: int) -> None:
    records = [sample(o, i, four) for i, o in enumerate(observations(60))]
    train, validation = convert(tmp_path, records, "sharded", shards=shards)
    assert train.is_dir() and validation.is_dir()
    assert sorted(p.name for p in train.iterdir()) == sorted(p.name for p in validation.iterdir())
    where = split_of(train, validation)
    assert len(where) == 60 and "validation" in where.values()
    before = {p: p.read_bytes() for p in [*train.iterdir(), *validation.iterdir()]}
    # A bad record in the last shard: nothing replaced, neither directory.
    broken = [*records[:-1], {**records[-1], "messages": "not a list"}]
    with pytest.raises(UserError, match="messages"):
        convert(tmp_path, broken, "sharded", shards=shards)
    assert {p: p.read_bytes() for p in [*train.iterdir(), *validation.iterdir()]} == before
    footer = json.loads(pq.ParquetFile(next(validation.iterdir())).metadata.metadata[b"memdistill.lineage"])
    assert footer["params"]["convert"]["validation_fraction"] == 0.25
