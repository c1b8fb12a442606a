"""The gain stage: pairing with prompts.jsonl, engine choice, "not measured", bad input, the gain file,
selection in convert, and the report (the embedded teacher scores hand-written completions: no decoding)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from memdistill.cli import main as cli_main
from memdistill.convert.token_ids import load_text_tokenizer
from memdistill.core.errors import UserError
from memdistill.core.prompt_file import PromptRow
from memdistill.gain.engines import ScoringSettings
from memdistill.gain.gain_file import read_summary, read_table
from memdistill.gain.scoring import GainOptions, run_gain
from memdistill.generate.engine import dataset_row
from memdistill.generate.teachers.base import Completion
from tests.conftest import write_jsonl

SYSTEM = "You are a helpful agent."
QUESTIONS = ["What is the capital of France?", "Say hello.", "What is 2 + 2?"]
# SmolLM2 ids: " Paris" and friends do not matter here; any in-vocabulary ids score.
ANSWER_IDS = [[504, 3575, 314, 7042, 2], [19556, 17, 2], [36, 2]]


def _prompt(idx: int, question: str, strategy: str = "exclude_current") -> dict:
    return {"sample_idx": idx,
            "teacher_messages": [{"role": "system", "content": SYSTEM + " (with memory)"}, {"role": "user", "content": f"memory...\n{question}"}],
            "student_messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
            "metadata": {"strategy": strategy, "observation_idx": idx}}


@functools.cache
def _tokenizer():
    return load_text_tokenizer("smollm2-135m-instruct")


def _completion(idx: int, ids: list[int]) -> Completion:
    tokenizer = _tokenizer()
    content = []
    for t, token in enumerate(ids):
        piece, other = tokenizer.decode([token]), tokenizer.decode([1000 + t])
        top = [{"token": piece, "logprob": -0.2, "token_id": token}, {"token": other, "logprob": -2.0, "token_id": 1000 + t}]
        content.append({"token": piece, "logprob": -0.2, "token_id": token, "top_logprobs": top})
    # An empty answer that "stopped" would get convert's end-of-turn appended: "length" keeps it empty.
    return Completion(idx, tokenizer.decode_text(ids) or "", ids, content, "stop" if ids else "length", 10, len(ids), 0.1)


def _teacher(backend: str = "local", model: str = "smollm2-135m-instruct", flavor: str | None = None) -> dict:
    return {"backend": backend, "flavor": flavor, "model": model, "temperature": 0.0, "top_logprobs": 2, "logprobs": "tempered"}


def write_pair(folder: Path, teacher: dict | None = None, answers: list[list[int]] = ANSWER_IDS) -> tuple[Path, Path]:
    prompts = [_prompt(i, q) for i, q in enumerate(QUESTIONS)]
    rows = [PromptRow(p["sample_idx"], p["teacher_messages"], p["student_messages"], p["metadata"]) for p in prompts]
    records = [dataset_row(row, _completion(row.sample_idx, ids), teacher or _teacher()) for row, ids in zip(rows, answers)]
    return write_jsonl(folder / "prompts.jsonl", prompts), write_jsonl(folder / "dataset.jsonl", records)


def gain_rows(path: Path) -> list[dict]:
    return read_table(path).to_pylist()


# ------------------------------------------------------------------------------------------- not measured


def test_a_teacher_that_cannot_score_gives_not_measured_and_one_line(tmp_path, caplog):
    prompts, dataset = write_pair(tmp_path, _teacher("openai", "gpt-4o-mini", "openai"))
    summary = run_gain(prompts, dataset, tmp_path / "gain.parquet", GainOptions("auto"))
    rows = gain_rows(tmp_path / "gain.parquet")
    assert [r["status"] for r in rows] == ["not_measured"] * 3
    assert all(r["gain"] is None for r in rows)  # never zeros
    assert "openai with flavor openai" in summary.not_measured and "vllm" in summary.not_measured
    assert read_summary(tmp_path / "gain.parquet")["not_measured"] == summary.not_measured
    warnings = [r.message for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "backends that can: local" in warnings[0]


def test_backend_none_skips_scoring(tmp_path):
    prompts, dataset = write_pair(tmp_path)
    summary = run_gain(prompts, dataset, tmp_path / "gain.parquet", GainOptions("none"))
    assert summary.not_measured == "gain.backend is none"
    assert {r["status"] for r in gain_rows(tmp_path / "gain.parquet")} == {"not_measured"}


# ---------------------------------------------------------------------------------------------- bad input


def _edit(dataset: Path, line: int, change) -> None:
    records = [json.loads(text) for text in dataset.read_text().splitlines()]
    change(records)
    write_jsonl(dataset, records)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda r: r.__setitem__(1, r[1] | {"messages": [{**r[1]["messages"][0]}, {**r[1]["messages"][1], "content": "edited"}, r[1]["messages"][2]]}),
         "dataset.jsonl:2: sample 1 does not match"),
        (lambda r: r.reverse(), "dataset.jsonl:2: sample 1 does not match"),
        (lambda r: r[0]["metadata"].__setitem__("strategy", "full_memory"), "dataset.jsonl:1: sample 0 does not match"),
        (lambda r: r[2]["metadata"].__setitem__("sample_idx", 7), "dataset.jsonl:3: sample 7 does not match"),
    ],
    ids=["edited", "reordered", "another-strategy", "unknown-sample"],
)
def test_a_dataset_that_no_longer_matches_its_prompts_is_one_line(tmp_path, capsys, change, expected):
    prompts, dataset = write_pair(tmp_path, _teacher("openai", "gpt-4o-mini", "openai"))
    _edit(dataset, 0, change)
    code = cli_main(["gain", "--prompts", str(prompts), "--input", str(dataset), "--output", str(tmp_path / "gain.parquet")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and expected in err and "Traceback" not in err
    assert not (tmp_path / "gain.parquet").exists()


def test_the_scoring_model_must_be_the_generating_model(tmp_path):
    prompts, dataset = write_pair(tmp_path, _teacher("local", "HuggingFaceTB/SmolLM2-360M-Instruct"))
    with pytest.raises(UserError, match="generated by 'HuggingFaceTB/SmolLM2-360M-Instruct'"):
        run_gain(prompts, dataset, tmp_path / "gain.parquet", GainOptions("auto"))


def test_min_memory_gain_without_a_gain_file_is_one_line(tmp_path):
    from stages.convert import ConvertConfig, gain_selection

    with pytest.raises(UserError, match="pass --gain"):
        gain_selection(ConvertConfig(min_memory_gain=0.5), None)


# ---------------------------------------------------------------------------- the embedded teacher scores


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """Three hand-written completions (one empty) scored by the embedded teacher, then converted with --gain."""
    folder = tmp_path_factory.mktemp("scored")
    prompts, dataset = write_pair(folder, answers=[ANSWER_IDS[0], [], ANSWER_IDS[2]])
    summary = run_gain(prompts, dataset, folder / "gain.parquet", GainOptions("auto", ScoringSettings(batch_size=2)))
    return folder, summary


def test_an_empty_completion_has_no_gain_and_is_counted(scored):
    folder, summary = scored
    rows = gain_rows(folder / "gain.parquet")
    assert [r["status"] for r in rows] == ["measured", "empty", "measured"]
    assert rows[1]["gain"] is None and rows[1]["n_tokens"] == 0 and summary.empty == 1
    assert rows[0]["n_tokens"] == len(rows[0]["token_gains"]) == len(rows[0]["logq_chosen"]) == 5
    assert summary.engine["engine"] == "local" and summary.missing_entries == 0  # exact: nothing bounded


def test_gain_matches_the_math_on_the_engines_own_logprobs(scored):
    folder, _ = scored
    row = gain_rows(folder / "gain.parquet")[0]
    # The chosen token is the teacher's top entry at -0.2 next to one at -2.0: G_t from the recorded values.
    assert row["gain"] == pytest.approx(np.mean(row["token_gains"]))
    assert all(np.isfinite(row["token_gains"])) and all(v <= 0 for v in row["logq_chosen"])
    assert 0.0 <= row["top1_agreement"] <= 1.0


def test_convert_carries_each_rows_gain_and_leaves_out_those_below_the_threshold(scored, capsys):
    folder, _ = scored
    gains = {r["key"]: r["gain"] for r in gain_rows(folder / "gain.parquet")}
    base = ["convert", "--input", str(folder / "dataset.jsonl"), "--gain", str(folder / "gain.parquet")]
    assert cli_main([*base, "--output", str(folder / "all.parquet")]) == 0
    metadata = pq.read_table(folder / "all.parquet").column("metadata").to_pylist()
    assert [m["memory_gain"] for m in metadata] == [gains[0], None, gains[2]]
    threshold = (gains[0] + gains[2]) / 2
    assert cli_main([*base, "--output", str(folder / "kept.parquet"), "--min-memory-gain", str(threshold)]) == 0
    kept = pq.read_table(folder / "kept.parquet").column("metadata").to_pylist()
    high = 0 if gains[0] >= threshold else 2
    assert sorted(m["sample_idx"] for m in kept) == sorted([high, 1])  # the unmeasured one is kept
    figures = json.loads((folder / "kept.figures.json").read_text())
    assert figures["left_out_low_gain"] == [2 - high] and figures["rows"] == 2


def test_convert_refuses_a_gain_file_of_another_dataset(scored, tmp_path, capsys):
    folder, _ = scored
    other = tmp_path / "other"
    other.mkdir()
    prompts, dataset = write_pair(other, _teacher("openai", "gpt-4o-mini", "openai"))
    _edit(dataset, 0, lambda r: r[2]["metadata"].__setitem__("sample_idx", 9))
    code = cli_main(["convert", "--input", str(dataset), "--output", str(tmp_path / "x.parquet"), "--gain", str(folder / "gain.parquet"),
                     "--model", "smollm2-135m-instruct"])
    err = capsys.readouterr().err
    assert code == 2 and "sample 9 has no entry" in err


def test_stats_reports_the_memory_gain(scored, tmp_path):
    from memdistill.gain.report import gain_report, summary_lines

    folder, _ = scored
    report = gain_report(folder / "gain.parquet", folder / "dataset.jsonl")
    m = report.metrics
    assert m["samples_measured"] == 2 and m["samples_empty"] == 1
    assert m["p10"] <= m["p50"] <= m["p90"] and m["mean"] is not None
    assert report.histogram["samples"].sum() == 2
    text = "\n".join(summary_lines(report))
    assert "Highest gain" in text and "What is the capital of France?" in text


def test_inspect_colours_tokens_by_gain(scored, capsys):
    folder, _ = scored
    assert cli_main(["inspect", str(folder / "dataset.jsonl"), "--sample", "0", "--gain", "--color", "always"]) == 0
    out = capsys.readouterr().out
    assert "memory gain G_t" in out and "G_t" in out.splitlines()[-6]


def test_tempered_scoring_divides_the_logits_by_the_teachers_temperature():
    """tempered at T > 0: log q = log_softmax(logits / T), so differences between ids shrink by T; raw keeps them."""
    from memdistill.gain.engines.base import ScoreRequest
    from memdistill.gain.engines.local import LocalScorer

    request = ScoreRequest(0, [1, 9690, 198, 19556, 2, 198, 1, 520, 9531, 198], [504, 3575], np.array([[504, 3575], [3575, 504]]))
    raw = LocalScorer("smollm2-135m-instruct", ScoringSettings(logprobs="raw", temperature=2.0)).score([request])[0]
    tempered = LocalScorer("smollm2-135m-instruct", ScoringSettings(logprobs="tempered", temperature=2.0)).score([request])[0]
    np.testing.assert_allclose(np.diff(tempered.logq_topk, axis=1), np.diff(raw.logq_topk, axis=1) / 2.0, rtol=1e-6)
    assert (tempered.top1_id == raw.top1_id).all() and np.isnan(raw.lower_bound).all()
