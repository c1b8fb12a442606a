"""convert: intermediate JSONL -> cartridges parquet, read back the way cartridges reads it."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memdistill.cli import main as cli_main
from memdistill.convert.conversion import convert_file
from memdistill.convert.token_ids import load_text_tokenizer
from memdistill.core.errors import UserError

from .conftest import write_jsonl

MODEL = "smollm2-135m-instruct"
IM_END = 2


@pytest.fixture(scope="module")
def vocab() -> dict[str, int]:
    return load_text_tokenizer(MODEL).vocab


# ------------------------------------------------------------------------------------------ fixtures


def entry(token: str, logprob: float, token_id: int | None = None) -> dict:
    out = {"token": token, "logprob": logprob}
    if token_id is not None:
        out["token_id"] = token_id
    return out


def item(chosen: tuple, alternatives: list[tuple]) -> dict:
    """chosen/alternatives as (token, prob[, id]); probabilities become logprobs."""
    def make(spec: tuple) -> dict:
        return entry(spec[0], math.log(spec[1]) if spec[1] > 0 else -math.inf, spec[2] if len(spec) > 2 else None)

    return {**make(chosen), "top_logprobs": [make(a) for a in alternatives]}


def record(items: list[dict] | None, *, token_ids=None, finish_reason: str | None = "stop", teacher: str | None = MODEL, index: int = 0,
           content: str = "x") -> dict:
    metadata: dict = {"sample_idx": index}
    if teacher:
        metadata["teacher"] = {"backend": "local", "model": teacher, "temperature": 0.0, "top_logprobs": 4}
    if finish_reason:
        metadata["finish_reason"] = finish_reason
    return {
        "messages": [
            {"role": "system", "content": "You are a tutor.", "token_ids": None, "logprobs": None},
            {"role": "user", "content": f"What is {index} + 2?", "token_ids": None, "logprobs": None},
            {"role": "assistant", "content": content, "token_ids": token_ids, "logprobs": None if items is None else {"content": items}},
        ],
        "system_prompt": "You are a tutor.",
        "metadata": metadata,
        "type": "memory_distillation",
    }


def mixed_records(vocab: dict[str, int]) -> list[dict]:
    the, a, four = vocab["Ġthe"], vocab["Ġa"], vocab["4"]
    return [
        # Exact ids (local teacher / tokasaurus), ends on end-of-turn.
        record([
            item((" the", 0.7, the), [(" the", 0.7, the), (" a", 0.2, a), ("4", 0.05, four), ("x", 0.01, vocab["x"])]),
            item(("<|im_end|>", 0.999, IM_END), [("<|im_end|>", 0.999, IM_END), ("4", 0.0005, four)]),
        ], token_ids=[the, IM_END], index=0),
        # Decoded strings only (plain OpenAI server); a flat row whose top-K never reaches 0.99.
        record([
            item(("4", 0.3), [("4", 0.3), (" the", 0.2), (" a", 0.1), ("x", 0.05)]),
            item(("<|im_end|>", 0.9), [("<|im_end|>", 0.9), ("4", 0.09), (" a", 0.009)]),
        ], index=1, content="4"),
        # Raw BPE strings (tokasaurus without ids), alternatives out of order, a -inf entry.
        record([
            item(("Ġa", 0.5), [("Ġthe", 0.45), ("Ġa", 0.5), ("4", 0.0)]),
            item(("<|im_end|>", 1.0), [("<|im_end|>", 1.0)]),
        ], index=2, content=" a"),
        # vLLM token_id:N strings; stopped for length, so no end-of-turn.
        record([item((f"token_id:{four}", 0.995), [(f"token_id:{four}", 0.995), (f"token_id:{a}", 0.004)])], finish_reason="length", index=3),
    ]


# ---------------------------------------------------------------------------------- cartridges reader


@dataclass
class FlatTopLogprobs:
    """The fields cartridges unpacks with FlatTopLogprobs(**message["top_logprobs"])."""

    token_idx: np.ndarray
    token_id: np.ndarray
    logprobs: np.ndarray
    shape: np.ndarray

    def dense(self) -> tuple[np.ndarray, np.ndarray]:
        T, K = (int(x) for x in self.shape)
        lp = np.full((T, K), -np.inf, dtype=np.float64)
        ids = np.full((T, K), -1, dtype=np.int64)
        for t in range(T):
            rows = np.flatnonzero(np.asarray(self.token_idx) == t)
            lp[t, : rows.size] = np.asarray(self.logprobs)[rows]
            ids[t, : rows.size] = np.asarray(self.token_id)[rows]
        return lp, ids


def read_like_cartridges(path: Path) -> list[dict]:
    rows = pd.read_parquet(path).to_dict(orient="records")
    for row in rows:
        assert set(row) >= {"messages", "system_prompt", "metadata", "type"}
        for message in row["messages"]:
            assert set(message) >= {"content", "role", "token_ids", "top_logprobs"}
    return rows


def check_invariants(rows: list[dict], mass: float, source: list[dict]) -> int:
    """The parquet invariants on every assistant row; returns the number of rows checked."""
    checked = 0
    for row, raw in zip(rows, source):
        for message, raw_message in zip(row["messages"], raw["messages"]):
            if message["role"] != "assistant":
                assert message["top_logprobs"] is None
                continue
            top = FlatTopLogprobs(**message["top_logprobs"])
            assert np.asarray(top.logprobs).dtype == np.float32
            lp, ids = top.dense()
            assert int(top.shape[0]) == len(message["token_ids"])
            items = raw_message["logprobs"]["content"]
            for t in range(lp.shape[0]):
                kept = np.isfinite(lp[t])
                values = lp[t, kept]
                assert kept.sum() >= 1 and not kept[kept.sum():].any()
                assert np.all(np.diff(values) <= 0), "sorted by logprob, descending"
                cumulative = np.cumsum(np.exp(values))
                real = [a for a in items[t]["top_logprobs"] if a["logprob"] > -math.inf] if t < len(items) else [None]
                if cumulative[-1] < mass:
                    assert kept.sum() == len(real), "mass never reached: all K kept"
                else:
                    assert kept.sum() == 1 or cumulative[-2] < mass, "shortest prefix"
                checked += 1
    return checked


# ------------------------------------------------------------------------------------------- tests


def test_output_reads_like_cartridges_and_keeps_invariants(tmp_path: Path, vocab: dict[str, int]) -> None:
    source = mixed_records(vocab)
    out = tmp_path / "out.parquet"
    summary = convert_file(write_jsonl(tmp_path / "in.jsonl", source), out, MODEL, 0.99, rows_per_group=3)
    rows = read_like_cartridges(out)
    assert len(rows) == 4 and summary.rows == 4
    assert check_invariants(rows, 0.99, source) == 7
    the, a, four = vocab["Ġthe"], vocab["Ġa"], vocab["4"]
    assistant = [row["messages"][2] for row in rows]
    assert [list(m["token_ids"]) for m in assistant] == [[the, IM_END], [four, IM_END], [a, IM_END], [four]]
    # Row 0: 0.7 + 0.2 + 0.05 = 0.95 < 0.99, + 0.01 = 0.96: all four kept; row 1: 0.999 alone.
    first = FlatTopLogprobs(**assistant[0]["top_logprobs"])
    assert list(first.token_idx) == [0, 0, 0, 0, 1] and list(first.token_id) == [the, a, four, vocab["x"], IM_END]
    assert list(first.shape) == [2, 4]
    third = FlatTopLogprobs(**assistant[2]["top_logprobs"])
    assert list(third.token_id) == [a, the, IM_END]  # sorted; the -inf entry dropped
    system = rows[0]["messages"][0]
    assert list(system["token_ids"]) == load_text_tokenizer(MODEL).encode("You are a tutor.")
    assert rows[0]["metadata"]["sample_idx"] == 0 and json.loads(rows[0]["metadata"]["json"])["sample_idx"] == 0
    parquet = pq.ParquetFile(out)
    assert parquet.metadata.num_row_groups == 2
    assert parquet.metadata.row_group(0).column(0).compression == "ZSTD"
    footer = json.loads(parquet.metadata.metadata[b"memdistill.convert"])
    assert footer["assistant_tokens"] == 7 and footer["unmapped_ids"] == 0 and footer["eot_appended"] == 0


def test_lower_mass_keeps_fewer_entries(tmp_path: Path, vocab: dict[str, int]) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", mixed_records(vocab))
    high = convert_file(source, tmp_path / "high.parquet", MODEL, 0.99)
    low = convert_file(source, tmp_path / "low.parquet", MODEL, 0.5)
    assert low.kept_entries < high.kept_entries
    check_invariants(read_like_cartridges(tmp_path / "low.parquet"), 0.5, mixed_records(vocab))


SEED_RECORD = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4", "logprobs": {"content": [
            {"token": "4", "logprob": -0.1, "top_logprobs": [{"token": "4", "logprob": -0.1}, {"token": " four", "logprob": -2.5}]}]}},
    ],
    "system_prompt": "Be brief.",
    "metadata": {"sample_idx": 0},
    "type": "memory_distillation",
}


def test_seed_format_converts_with_the_seed_command(tmp_path: Path, capsys) -> None:
    """Only the plain OpenAI fields: no token_id, no assistant token_ids, no metadata.teacher."""
    seed = SEED_RECORD
    source = write_jsonl(tmp_path / "X.jsonl", [seed, seed])
    out = tmp_path / "Y.parquet"
    assert cli_main(["convert", "--input", str(source), "--output", str(out), "--model", MODEL, "--min-prob-mass", "0.99"]) == 0
    rows = read_like_cartridges(out)
    message = rows[0]["messages"][2]
    tokenizer = load_text_tokenizer(MODEL)
    assert list(message["token_ids"]) == tokenizer.encode("4")  # no finish_reason: nothing appended
    top = FlatTopLogprobs(**message["top_logprobs"])
    assert list(top.token_id) == [tokenizer.vocab["4"], tokenizer.vocab["Ġfour"]]
    # Without --model the plain file names no teacher: one clear error, exit 2, no output.
    out.unlink()
    assert cli_main(["convert", "--input", str(source), "--output", str(out)]) == 2
    assert "--model" in capsys.readouterr().err and not out.exists()


def test_default_model_is_the_recorded_teacher(tmp_path: Path, vocab: dict[str, int]) -> None:
    summary = convert_file(write_jsonl(tmp_path / "in.jsonl", mixed_records(vocab)), tmp_path / "o.parquet", None, 0.99)
    assert summary.tokenizer == MODEL and summary.recorded_model == MODEL


def test_end_of_turn_missing_from_logprobs_is_appended_and_counted(tmp_path: Path, vocab: dict[str, int]) -> None:
    four = vocab["4"]
    rows = [
        record([item(("4", 0.9, four), [("4", 0.9, four)])], index=0),  # stop, eot omitted, no token_ids
        record([item(("4", 0.9, four), [("4", 0.9, four)])], token_ids=[four, IM_END], index=1),  # ids carry the eot
        record([item(("4", 0.9, four), [("4", 0.9, four)])], finish_reason="length", index=2),  # not a stop
    ]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    summary = convert_file(source, tmp_path / "o.parquet", MODEL, 0.99)
    assert summary.eot_appended == 2
    out = read_like_cartridges(tmp_path / "o.parquet")
    for row in out[:2]:
        message = row["messages"][2]
        assert list(message["token_ids"]) == [four, IM_END]
        top = FlatTopLogprobs(**message["top_logprobs"])
        assert list(top.token_idx) == [0, 1] and list(top.token_id) == [four, IM_END] and top.logprobs[1] == 0.0
        assert row["metadata"]["eot_appended"] is True
        assert json.loads(row["metadata"]["json"])["convert"] == {"eot_appended": True}
    assert list(out[2]["messages"][2]["token_ids"]) == [four] and out[2]["metadata"]["eot_appended"] is False
    off = convert_file(source, tmp_path / "off.parquet", MODEL, 0.99, append_eot=False)
    assert off.eot_appended == 0
    assert [list(row["messages"][2]["token_ids"]) for row in read_like_cartridges(tmp_path / "off.parquet")] == [[four]] * 3


def test_intermediate_parquet_converts_like_jsonl(tmp_path: Path, vocab: dict[str, int]) -> None:
    source = mixed_records(vocab)
    as_parquet = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist([{**r, "metadata": json.dumps(r["metadata"])} for r in source]), as_parquet)
    convert_file(as_parquet, tmp_path / "a.parquet", MODEL, 0.99)
    convert_file(write_jsonl(tmp_path / "in.jsonl", source), tmp_path / "b.parquet", MODEL, 0.99)
    assert pq.read_table(tmp_path / "a.parquet").equals(pq.read_table(tmp_path / "b.parquet"))


def test_counts_missing_logprobs_and_chosen_outside_top_k(tmp_path: Path, vocab: dict[str, int]) -> None:
    four, the = vocab["4"], vocab["Ġthe"]
    rows = [
        record([item(("4", 0.01, four), [(" the", 0.9, the)])], finish_reason="length"),  # sampled outside its top-k
        record(None, token_ids=[four]),
        record([item(("4", 0.9, four), [])], finish_reason="length"),  # no alternatives: the chosen token alone
    ]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    summary = convert_file(source, tmp_path / "o.parquet", MODEL, 0.99)
    assert summary.chosen_not_in_topk == 1 and summary.missing_logprobs == 1 and summary.rows_without_alternatives == 1
    out = read_like_cartridges(tmp_path / "o.parquet")
    # The message without logprobs is not in the parquet (cartridges would train on nothing): it is a reject.
    assert len(out) == 2 and summary.rejected == 1 and summary.rejected_by_reason == {"no_logprobs": 1}
    assert all(m["top_logprobs"] is not None for row in out for m in row["messages"] if m["role"] == "assistant")
    rejects = [json.loads(line) for line in (tmp_path / "o.parquet.rejects.jsonl").read_text().splitlines()]
    assert rejects == [{"record": 1, "where": f"{source}:2", "sample_idx": 0, "kind": "no_logprobs",
                        "reason": f"{source}:2: messages[2]: assistant message has no logprobs"}]
    assert list(FlatTopLogprobs(**out[1]["messages"][2]["top_logprobs"]).token_id) == [four]
    with pytest.raises(UserError, match=r"in.jsonl:2: messages\[2\]: assistant message has no logprobs"):
        convert_file(source, tmp_path / "strict.parquet", MODEL, 0.99, strict=True)
    assert not (tmp_path / "strict.parquet").exists()


def _bad(tmp_path: Path, text: str) -> tuple[Path, Path]:
    source = tmp_path / "bad.jsonl"
    source.write_text(text, encoding="utf-8")
    return source, tmp_path / "bad.parquet"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r, None),
        (lambda r: "{not json", r"bad.jsonl:2: not valid JSON"),
        (lambda r: json.dumps(r).replace("-0.10536051565782628", "NaN"), r"bad.jsonl:2: messages\[2\].logprobs.content\[0\].top_logprobs\[0\].logprob: logprob is NaN"),
        (lambda r: json.dumps(r).replace("-2.3025850929940455", "0.5"), r"top_logprobs\[1\].logprob: logprob 0.5 is positive"),
        (lambda r: json.dumps(r).replace("-2.3025850929940455", '"high"'), r"top_logprobs\[1\].logprob: expected a number"),
        (lambda r: json.dumps({**r, "messages": []}), r"bad.jsonl:2: 'messages' must be a non-empty list"),
        (lambda r: json.dumps(r).replace('"top_logprobs": [', '"top_logprobs": [7, '), r"content\[0\].top_logprobs: expected a list of objects"),
        (lambda r: json.dumps({**r, "messages": r["messages"][:2] + [{**r["messages"][2], "token_ids": [1, 2, 3]}]}), r"token_ids has 3 ids but logprobs.content has 1"),
    ],
)
def test_bad_lines_name_file_line_and_field(tmp_path: Path, vocab: dict[str, int], mutate, message) -> None:
    good = record([item(("4", 0.9, vocab["4"]), [("4", 0.9, vocab["4"]), (" the", 0.1, vocab["Ġthe"])])])
    line = mutate(json.loads(json.dumps(good)))
    source, out = _bad(tmp_path, json.dumps(good) + "\n" + (line if isinstance(line, str) else json.dumps(line)) + "\n")
    if message is None:
        convert_file(source, out, MODEL, 0.99)
        assert out.exists()
        return
    with pytest.raises(UserError, match=message):
        convert_file(source, out, MODEL, 0.99)
    assert not out.exists() and list(tmp_path.glob(".bad.parquet*")) == []


def test_negative_infinity_is_a_valid_unkept_logprob(tmp_path: Path, vocab: dict[str, int]) -> None:
    good = record([item(("4", 0.9, vocab["4"]), [("4", 0.9, vocab["4"]), (" the", 0.0, vocab["Ġthe"])])], finish_reason="length")
    source, out = _bad(tmp_path, json.dumps(good) + "\n")  # Python's json writes -Infinity
    assert "-Infinity" in source.read_text()
    summary = convert_file(source, out, MODEL, 0.99)
    assert summary.topk_entries == 1 and summary.kept_entries == 1


def test_empty_input_and_missing_output_folder(tmp_path: Path, vocab: dict[str, int]) -> None:
    source, out = _bad(tmp_path, "\n\n")
    with pytest.raises(UserError, match="empty"):
        convert_file(source, out, MODEL, 0.99)
    assert not out.exists()
    good = write_jsonl(tmp_path / "good.jsonl", mixed_records(vocab))
    with pytest.raises(UserError, match="does not exist"):
        convert_file(good, tmp_path / "no" / "such" / "out.parquet", MODEL, 0.99)
    with pytest.raises(UserError, match="not found"):
        convert_file(tmp_path / "absent.jsonl", out, MODEL, 0.99)


def test_wrong_tokenizer_names_both_models(tmp_path: Path, vocab: dict[str, int]) -> None:
    """A different tokenizer (a tiny word-level one in a local folder) cannot map the teacher's strings."""
    import tokenizers

    folder = tmp_path / "tiny-tokenizer"
    folder.mkdir()
    tiny = tokenizers.Tokenizer(tokenizers.models.WordLevel({"[UNK]": 0, "hello": 1}, unk_token="[UNK]"))
    tiny.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tiny.save(str(folder / "tokenizer.json"))
    records = [record([item(("4", 0.3), [("4", 0.3), (" the", 0.2)]), item((" a", 0.3), [(" a", 0.3)])], finish_reason="length")]
    source = write_jsonl(tmp_path / "in.jsonl", records)
    with pytest.raises(UserError, match=f"dataset generated by {MODEL}, converting with {folder}"):
        convert_file(source, tmp_path / "o.parquet", str(folder), 0.99)
    assert not (tmp_path / "o.parquet").exists()


def test_cli_reads_params_and_flags_override(tmp_path: Path, vocab: dict[str, int]) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", mixed_records(vocab))
    params = tmp_path / "params.yaml"
    params.write_text("convert:\n  model: null\n  min_prob_mass: 0.5\n  rows_per_group: 1\n", encoding="utf-8")
    out = tmp_path / "o.parquet"
    assert cli_main(["convert", "--params", str(params), "--input", str(source), "--output", str(out)]) == 0
    assert pq.ParquetFile(out).metadata.num_row_groups == 4
    assert json.loads(pq.ParquetFile(out).metadata.metadata[b"memdistill.convert"])["min_prob_mass"] == 0.5
    assert cli_main(["convert", "--params", str(params), "--input", str(source), "--output", str(out), "--min-prob-mass", "0"]) == 2


def test_empty_completion_that_stopped_gets_only_the_end_of_turn(tmp_path: Path, vocab: dict[str, int]) -> None:
    rows = [record([], index=0), record([], finish_reason="length", index=1)]
    summary = convert_file(write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "o.parquet", MODEL, 0.99)
    out = read_like_cartridges(tmp_path / "o.parquet")
    assert list(out[0]["messages"][2]["token_ids"]) == [IM_END] and summary.eot_appended == 1
    assert list(out[1]["messages"][2]["token_ids"]) == []
    assert list(FlatTopLogprobs(**out[1]["messages"][2]["top_logprobs"]).shape) == [0, 1]


def test_text_memo_overflow_keeps_cached_texts(tmp_path: Path, vocab: dict[str, int], monkeypatch) -> None:
    """Regression: clearing the text memo when it overflows must not lose texts already counted as cached."""
    from memdistill.convert import engine

    monkeypatch.setattr(engine, "TEXT_MEMO_SIZE", 3)
    # Same system prompt on every row, a new user text each time: the memo overflows on the third row
    # while the system prompt is still cached.
    rows = [record([item(("4", 0.9, vocab["4"]), [("4", 0.9, vocab["4"])])], finish_reason="length", index=i) for i in range(6)]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    summary = convert_file(source, tmp_path / "o.parquet", MODEL, 0.99)
    assert summary.rows == 6
    tokenizer = load_text_tokenizer(MODEL)
    for i, row in enumerate(read_like_cartridges(tmp_path / "o.parquet")):
        assert list(row["messages"][0]["token_ids"]) == tokenizer.encode("You are a tutor.")
        assert list(row["messages"][1]["token_ids"]) == tokenizer.encode(f"What is {i} + 2?")


# ------------------------------------------------------------- one engine, two ways a block reaches it

ROUTES = ("arrow", "checked")


def use_route(monkeypatch, route: str) -> None:
    """"arrow": blocks as pyarrow's JSON reader gives them; "checked": every block through the record-by-record
    check, which hands the engine its records normalised (what a block arrow cannot take goes through)."""
    from memdistill.convert import conversion, records

    def unreadable(chunk, options):
        raise records.Unreadable("checked route")

    monkeypatch.setattr(conversion, "parse_lines", unreadable if route == "checked" else records.parse_lines)


def convert_both(source: Path, tmp_path: Path, monkeypatch, **kwargs) -> tuple[bytes, bytes]:
    """The parquet bytes written for the same input by the arrow route and by the checked route."""
    from memdistill.convert import conversion

    written = []
    for route in ROUTES:
        use_route(monkeypatch, route)
        out = tmp_path / f"{route}.parquet"
        conversion.convert_file(source, out, MODEL, 0.99, **kwargs)
        written.append(out.read_bytes())
    use_route(monkeypatch, "arrow")
    return written[0], written[1]


def checked_blocks(monkeypatch) -> list[str]:
    """Where each block the engine could not take began (appended as convert runs)."""
    from memdistill.convert import checks

    seen: list[str] = []
    normalised = checks.RecordChecker.normalised

    def counting(checker, block):
        seen.append(block.wheres[0])
        return normalised(checker, block)

    monkeypatch.setattr(checks.RecordChecker, "normalised", counting)
    return seen


def special_records(vocab: dict[str, int]) -> list[dict]:
    """Shapes the engine takes as arrow reads them: missing logprobs, empty top_logprobs, a chosen token
    outside its top-k, end-of-turn carried by token_ids, -inf entries, no system_prompt, no metadata,
    a token string that is the word "metadata", bytes on some entries only."""
    four, the = vocab["4"], vocab["Ġthe"]
    rows = [
        record([item(("4", 0.01, four), [(" the", 0.9, the)])], finish_reason="length", index=0),
        record(None, token_ids=[four], index=1),
        record([item(("4", 0.9, four), [])], finish_reason="length", index=2),
        record([item(("4", 0.9, four), [("4", 0.9, four)])], token_ids=[four, IM_END], index=3),
        record([item(("metadata", 0.5), [("metadata", 0.5), (" the", 0.0), ("4", 0.3)])], index=4, content="metadata"),
        record([], index=5),
    ]
    rows[4]["messages"][2]["logprobs"]["content"][0]["top_logprobs"][2]["bytes"] = [52]
    del rows[5]["system_prompt"], rows[5]["metadata"]
    return rows


@pytest.mark.parametrize("fixture", ["mixed", "seed", "special"])
def test_the_engine_takes_these_blocks_as_arrow_reads_them_and_normalised_the_same(tmp_path: Path, vocab: dict[str, int], monkeypatch, fixture: str) -> None:
    records = {"mixed": mixed_records(vocab), "seed": [SEED_RECORD, SEED_RECORD], "special": special_records(vocab)}[fixture]
    source = write_jsonl(tmp_path / "in.jsonl", records)
    arrow, checked = convert_both(source, tmp_path, monkeypatch)
    assert arrow == checked
    seen = checked_blocks(monkeypatch)
    convert_file(source, tmp_path / "again.parquet", MODEL, 0.99)
    assert seen == [] and (tmp_path / "again.parquet").read_bytes() == arrow  # taken whole, no record checked


def test_lines_arrow_does_not_take_are_checked_per_block_and_keep_errors(tmp_path: Path, vocab: dict[str, int], monkeypatch) -> None:
    """Lines arrow does not take (logprobs as a bare list, a number as system_prompt, a token that is not a
    string) are checked record by record, block by block, then converted by the same engine; a nested
    "metadata" key and a huge int are read on the arrow route. Bad lines keep their file:line errors."""
    from memdistill.convert import conversion

    monkeypatch.setattr(conversion, "BLOCK_BYTES", 1)  # one line per block
    good = mixed_records(vocab)
    odd = json.loads(json.dumps(good[0]))
    odd["metadata"]["nested"] = {"metadata": {"x": 1}}
    numeric = {**json.loads(json.dumps(good[1])), "system_prompt": 7}
    huge = json.loads(json.dumps(good[2]))
    huge["metadata"]["big"] = 2**70
    bare = json.loads(json.dumps(good[3]))
    bare["messages"][2]["logprobs"] = bare["messages"][2]["logprobs"]["content"]
    bare["messages"][2]["logprobs"][0]["top_logprobs"][0]["token"] = 5  # not a string: read as absent
    source = write_jsonl(tmp_path / "in.jsonl", [good[0], odd, numeric, huge, bare])
    seen = checked_blocks(monkeypatch)
    summary = convert_file(source, tmp_path / "o.parquet", MODEL, 0.99, max_unmapped_rate=1.0)
    assert seen == [f"{source}:3", f"{source}:5"] and summary.dropped_alternatives == 1
    rows = read_like_cartridges(tmp_path / "o.parquet")
    assert rows[2]["system_prompt"] == "7" and json.loads(rows[1]["metadata"]["json"])["nested"] == {"metadata": {"x": 1}}
    assert json.loads(rows[3]["metadata"]["json"])["big"] == 2**70
    assert len(rows[4]["messages"][2]["token_ids"]) == 1 and rows[4]["messages"][2]["top_logprobs"] is not None
    text = source.read_text()
    for bad, message in [
        (text.replace("-0.35667494393873245", "NaN", 1), r"bad.jsonl:1: messages\[2\].logprobs.content\[0\].logprob: logprob is NaN"),
        (text + '{"messages": [], "metadata": {}}\n', r"bad.jsonl:6: 'messages' must be a non-empty list"),
        (text + "{not json\n", r"bad.jsonl:6: not valid JSON"),
        (text + "\n" + json.dumps(good[0]).replace('"role": "user"', '"role": 3') + "\n", r"bad.jsonl:7: messages\[1\]: expected an object with a 'role'"),
    ]:
        (tmp_path / "bad.jsonl").write_text(bad)
        for route in ROUTES:
            use_route(monkeypatch, route)
            with pytest.raises(UserError, match=message):
                conversion.convert_file(tmp_path / "bad.jsonl", tmp_path / "bad.parquet", MODEL, 0.99)
            assert not (tmp_path / "bad.parquet").exists()


_LOGPROB = st.one_of(st.floats(min_value=-30, max_value=0), st.just(-math.inf), st.just(0.5), st.just(math.nan), st.none())
_TOKEN = st.one_of(st.sampled_from(["4", " the", "Ġa", "é", "metadata", "token_id:17", "<|im_end|>", "zzqx"]), st.text(max_size=3), st.none())
_ENTRY = st.fixed_dictionaries(
    {"token": _TOKEN, "logprob": _LOGPROB},
    optional={"token_id": st.one_of(st.integers(-3, 60000), st.none()), "bytes": st.one_of(st.lists(st.integers(0, 300), max_size=3), st.none())},
)
_ITEM = st.builds(lambda e, alts: {**e, "top_logprobs": alts}, _ENTRY, st.one_of(st.lists(_ENTRY, max_size=4), st.none()))
_ASSISTANT = st.fixed_dictionaries({"role": st.just("assistant"), "content": st.one_of(st.text(max_size=5), st.none())}, optional={
    "token_ids": st.one_of(st.none(), st.lists(st.sampled_from([4, 2, 17, 60000]), max_size=4)),
    "logprobs": st.one_of(st.none(), st.fixed_dictionaries({"content": st.one_of(st.lists(_ITEM, max_size=4), st.none())})),
})
_ROW = st.fixed_dictionaries(
    {"messages": st.lists(st.one_of(_ASSISTANT, st.fixed_dictionaries({"role": st.sampled_from(["system", "user"]), "content": st.text(max_size=6)})), max_size=3)},
    optional={
        "system_prompt": st.one_of(st.text(max_size=4), st.none()),
        "metadata": st.one_of(st.none(), st.fixed_dictionaries({}, optional={"finish_reason": st.sampled_from(["stop", "length"]), "metadata": st.integers(), "x": st.floats(allow_nan=True)})),
        "type": st.one_of(st.text(max_size=4), st.none()),
    },
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(_ROW, min_size=1, max_size=4))
def test_both_routes_into_the_engine_agree_on_random_records(tmp_path: Path, monkeypatch, rows: list[dict]) -> None:
    """Same bytes written, or the same error, whether arrow reads the block or the records are checked one by
    one and normalised (arrow takes some lines, not others)."""
    from memdistill.convert import conversion

    source = tmp_path / "random.jsonl"
    source.write_text("".join(json.dumps(row, allow_nan=True) + "\n" for row in rows), encoding="utf-8")
    outcomes = []
    for route in ROUTES:
        use_route(monkeypatch, route)
        out = tmp_path / f"random_{route}.parquet"
        try:
            conversion.convert_file(source, out, MODEL, 0.9, max_unmapped_rate=1.0)
            outcomes.append(out.read_bytes())
            out.unlink()
        except UserError as exc:
            outcomes.append(str(exc))
    use_route(monkeypatch, "arrow")
    assert outcomes[0] == outcomes[1]


# ------------------------------------------------------------------- issue 12: nothing cartridges misreads


def text_items(text: str, tokenizer, with_bytes: bool = False, empty_halves: bool = False) -> tuple[list[dict], list[int]]:
    """What a plain OpenAI-compatible server sends for `text`: one entry per token, the decoded token string
    (llama.cpp: no bytes, "" for half a character), the real ids alongside for checking."""
    ids = tokenizer.encode(text)
    items = []
    for token_id in ids:
        token = tokenizer.decode([token_id])
        if empty_halves and "\ufffd" in token:
            token = ""
        spec = {"token": token, "logprob": -0.1}
        if with_bytes:
            from memdistill.convert.token_ids import byte_to_unicode

            to_byte = {char: byte for byte, char in byte_to_unicode().items()}
            spec["bytes"] = [to_byte[c] for c in next(p for p, i in tokenizer.vocab.items() if i == token_id)]
        items.append({**spec, "top_logprobs": [dict(spec), {"token": "zzqx-not-one-token", "logprob": -3.0}]})
    return items, ids


def test_accented_text_without_bytes_gets_its_real_ids(tmp_path: Path) -> None:
    """llama.cpp sends "é" with no bytes: the id is the one decoding to "é" (2756), not the lone byte (180)."""
    tokenizer = load_text_tokenizer(MODEL)
    text = "Jos\u00e9 ate 数字 🙂"
    items, ids = text_items(text, tokenizer)
    assert tokenizer.vocab["é"] != tokenizer.encode("é")[0]  # the trap: a vocabulary entry that is not the text
    source = write_jsonl(tmp_path / "in.jsonl", [record(items, content=text, finish_reason="length")])
    summary = convert_file(source, tmp_path / "o.parquet", MODEL, 0.99, max_unmapped_rate=1.0)
    message = read_like_cartridges(tmp_path / "o.parquet")[0]["messages"][2]
    assert list(message["token_ids"]) == ids
    assert tokenizer.decode(list(message["token_ids"])) == text
    # The unrecoverable alternative left every row (counted); what remains is the chosen token.
    top = FlatTopLogprobs(**message["top_logprobs"])
    assert list(top.token_id) == ids and summary.dropped_alternatives == len(ids) and summary.rejected == 0
    assert (top.token_id >= 0).all()


def test_half_characters_as_empty_strings_reject_the_sample(tmp_path: Path) -> None:
    tokenizer = load_text_tokenizer(MODEL)
    text = "smile 🫠"  # an emoji SmolLM2 splits into byte tokens
    items, ids = text_items(text, tokenizer, empty_halves=True)
    assert any(item["token"] == "" for item in items)
    ok_items, _ = text_items("fine", tokenizer)
    source = write_jsonl(tmp_path / "in.jsonl", [record(ok_items, content="fine", index=0, finish_reason="length"),
                                                 record(items, content=text, index=1, finish_reason="length")])
    summary = convert_file(source, tmp_path / "o.parquet", MODEL, 0.99, max_unmapped_rate=1.0)
    assert summary.rows == 1 and summary.rejected_by_reason == {"chosen_not_recovered": 1}
    reject = json.loads((tmp_path / "o.parquet.rejects.jsonl").read_text())
    assert reject["sample_idx"] == 1 and reject["where"] == f"{source}:2" and "cannot be recovered" in reject["reason"]
    with pytest.raises(UserError, match=r"in.jsonl:2: messages\[2\].logprobs.content\[\d+\]: the chosen token's id cannot be recovered .*strict"):
        convert_file(source, tmp_path / "strict.parquet", MODEL, 0.99, strict=True, max_unmapped_rate=1.0)
    assert not (tmp_path / "strict.parquet").exists()


def test_ids_that_do_not_decode_to_the_content_are_rejected(tmp_path: Path) -> None:
    tokenizer = load_text_tokenizer(MODEL)
    items, _ = text_items("four", tokenizer)
    source = write_jsonl(tmp_path / "in.jsonl", [record(items, content="five", finish_reason="length"),
                                                 record(items, content="four", index=1, finish_reason="length")])
    summary = convert_file(source, tmp_path / "o.parquet", MODEL, 0.99, max_unmapped_rate=1.0)
    assert summary.rows == 1 and summary.rejected_by_reason == {"ids_do_not_decode_to_content": 1}
    # Exact ids (token_id fields) are the teacher's own: no content check, they are kept.
    exact = [{**i, "token_id": t} for i, t in zip(items, tokenizer.encode("four"))]
    exact_summary = convert_file(write_jsonl(tmp_path / "exact.jsonl", [record(exact, content="five", finish_reason="length")]),
                                 tmp_path / "e.parquet", MODEL, 0.99, max_unmapped_rate=1.0)
    assert exact_summary.rows == 1 and exact_summary.rejected == 0


@pytest.mark.parametrize("bad_id", [999999, -5, -1, 2**70])
@pytest.mark.parametrize("where", ["alternative", "chosen", "token_ids"])
def test_ids_outside_the_vocabulary_name_file_line_and_field(tmp_path: Path, vocab: dict[str, int], monkeypatch, bad_id: int, where: str) -> None:

    four, the = vocab["4"], vocab["Ġthe"]
    good = record([item(("4", 0.9, four), [("4", 0.9, four), (" the", 0.1, the)])], finish_reason="length")
    bad = json.loads(json.dumps(good))
    token = bad["messages"][2]["logprobs"]["content"][0]
    field = {"alternative": r"messages\[2\].logprobs.content\[0\].top_logprobs\[1\].token_id",
             "chosen": r"messages\[2\].logprobs.content\[0\].token_id", "token_ids": r"messages\[2\].token_ids\[0\]"}[where]
    if where == "alternative":
        token["top_logprobs"][1]["token_id"] = bad_id
    elif where == "chosen":
        token["token_id"] = bad_id
    else:
        bad["messages"][2]["token_ids"] = [bad_id]
    source, out = _bad(tmp_path, json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    for route in ROUTES:
        use_route(monkeypatch, route)
        with pytest.raises(UserError, match=rf"bad.jsonl:2: {field}: id .*outside the vocabulary \[0, 49152\)"):
            convert_file(source, out, MODEL, 0.99)
        assert not out.exists()


def test_duplicate_ids_in_one_row_are_an_error(tmp_path: Path, vocab: dict[str, int], monkeypatch) -> None:

    four, the = vocab["4"], vocab["Ġthe"]
    dup = record([item(("4", 0.9, four), [("4", 0.5, four), (" the", 0.1, the)]),
                  item(("4", 0.9, four), [("4", 0.5, four), (" the", 0.1, the), ("4", 0.3, four)])], finish_reason="length")
    source, out = _bad(tmp_path, json.dumps(dup) + "\n")
    for route in ROUTES:
        use_route(monkeypatch, route)
        with pytest.raises(UserError, match=r"bad.jsonl:1: messages\[2\].logprobs.content\[1\].top_logprobs\[2\].token_id: id \d+ appears twice"):
            convert_file(source, out, MODEL, 0.99)
        assert not out.exists()


def test_no_end_of_turn_is_made_up_after_a_generation_config_eos(tmp_path: Path, vocab: dict[str, int]) -> None:
    """Llama-3.1 lists <|eot_id|> and <|eom_id|> in generation_config.eos_token_id; either ends the turn."""
    import dataclasses

    from memdistill.convert.conversion import iter_outcomes
    from memdistill.convert.engine import Engine, end_of_turn_ids
    from memdistill.convert.outcomes import ConvertSummary

    tokenizer = load_text_tokenizer(MODEL)
    eom = vocab["<|endoftext|>"]  # stands in for <|eom_id|>: an id only the generation config names
    assert eom not in end_of_turn_ids(tokenizer)
    llama_like = dataclasses.replace(tokenizer, generation_eos_ids=(IM_END, eom), eos_token_id=None)
    engine = Engine(llama_like, 0.99, False, ConvertSummary())
    assert engine.eot_ids[:2] == [IM_END, eom]
    four = vocab["4"]
    source = write_jsonl(tmp_path / "in.jsonl", [record([item(("4", 0.9, four), [("4", 0.9, four)]), item(("x", 0.9, eom), [("x", 0.9, eom)])],
                                                        token_ids=[four, eom], content="4")])
    [row] = list(iter_outcomes(source, engine))
    assert row.messages[2].token_ids.tolist() == [four, eom] and engine.summary.eot_appended == 0


def test_tokasaurus_eos_at_max_tokens_reported_as_length_ends_the_turn(tmp_path: Path, vocab: dict[str, int]) -> None:
    four = vocab["4"]
    rows = [record([item(("4", 0.9, four), [("4", 0.9, four)]), item(("<|im_end|>", 0.9, IM_END), [("<|im_end|>", 0.9, IM_END)])],
                   token_ids=[four, IM_END], finish_reason="length")]
    summary = convert_file(write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "o.parquet", MODEL, 0.99)
    out = read_like_cartridges(tmp_path / "o.parquet")[0]
    assert list(out["messages"][2]["token_ids"]) == [four, IM_END] and summary.eot_appended == 0
    assert out["metadata"]["finish_reason"] == "stop" and json.loads(out["metadata"]["json"])["finish_reason"] == "length"


def test_metadata_is_a_struct_with_typed_fields_and_the_whole_json(tmp_path: Path, vocab: dict[str, int]) -> None:
    convert_file(write_jsonl(tmp_path / "in.jsonl", mixed_records(vocab)), tmp_path / "o.parquet", MODEL, 0.99)
    schema = pq.read_schema(tmp_path / "o.parquet")
    assert pa.types.is_struct(schema.field("metadata").type)
    assert [f.name for f in schema.field("metadata").type] == ["sample_idx", "finish_reason", "logprobs", "eot_appended", "memory_gain", "json", "lineage"]
    rows = read_like_cartridges(tmp_path / "o.parquet")
    assert [r["metadata"]["sample_idx"] for r in rows] == [0, 1, 2, 3]
    assert [r["metadata"]["finish_reason"] for r in rows] == ["stop", "stop", "stop", "length"]
    assert json.loads(rows[3]["metadata"]["json"])["teacher"]["model"] == MODEL


def test_a_file_mixing_raw_and_tempered_logprobs_is_refused(tmp_path: Path, vocab: dict[str, int], monkeypatch) -> None:

    four = vocab["4"]
    rows = [record([item(("4", 0.9, four), [("4", 0.9, four)])], finish_reason="length", index=i) for i in range(3)]
    for row, mode in zip(rows, ["tempered", "tempered", "raw"]):
        row["metadata"]["teacher"]["logprobs"] = mode
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    for route in ROUTES:
        use_route(monkeypatch, route)
        with pytest.raises(UserError, match=r"in.jsonl:3: metadata.teacher.logprobs is 'raw' but .*in.jsonl:1 is 'tempered'"):
            convert_file(source, tmp_path / "o.parquet", MODEL, 0.99)
        assert not (tmp_path / "o.parquet").exists()
    write_jsonl(tmp_path / "in.jsonl", rows[:2])
    out = read_like_cartridges(tmp_path / "o.parquet") if convert_file(source, tmp_path / "o.parquet", MODEL, 0.99) else []
    assert [r["metadata"]["logprobs"] for r in out] == ["tempered", "tempered"]


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.lists(st.integers(-1, 6), max_size=6), max_size=6))
def test_first_duplicate_finds_the_first_repeated_id_of_a_row(rows: list[list[int]]) -> None:
    from memdistill.convert.checks import first_duplicate

    row_of = np.array([r for r, ids in enumerate(rows) for _ in ids], dtype=np.int64)
    ids = np.array([i for r in rows for i in r], dtype=np.int64)
    expected, seen = -1, set()
    for index, (row, token_id) in enumerate(zip(row_of.tolist(), ids.tolist())):
        if token_id != -1 and (row, token_id) in seen:
            expected = index
            break
        seen.add((row, token_id))
    assert first_duplicate(row_of, ids) == expected


# ------------------------------------------------------------------ the engine's block arrays


def block_records(vocab: dict[str, int]) -> list[dict]:
    """Records the engine takes as arrow reads them: token strings and ids mixed, an alternative whose
    id cannot be recovered (dropped), an empty top-k, a chosen token outside its top-k, stop with and
    without the end-of-turn, several messages per record, rows of different widths."""
    the, a, four = vocab["Ġthe"], vocab["Ġa"], vocab["4"]
    rows = [
        record([item((" the", 0.6), [(" the", 0.6), (" a", 0.3), ("no-such-token\u2603", 0.05)]),
                item((" a", 0.5), [(" a", 0.5)])], content=" the a", index=0),
        record([item(("4", 0.9, four), [("4", 0.9, four), (" a", 0.05, a), (" the", 0.01, the), ("5", 0.01)]),
                item(("<|im_end|>", 0.9, IM_END), [])], finish_reason="stop", index=1),
        record([item((" a", 0.2, a), [(" the", 0.7, the)])], finish_reason="length", index=2),
        record([item((" the", 0.999), [(" the", 0.999), (" a", 0.0005)])], content=" the", finish_reason=None, index=3),
    ]
    second = json.loads(json.dumps(rows[0]["messages"][2]))
    rows[3]["messages"] += [{"role": "user", "content": "again", "token_ids": None, "logprobs": None}, second]
    return rows


def test_blocks_convert_whole_with_their_counts(tmp_path: Path, vocab: dict[str, int], monkeypatch) -> None:
    """Clean blocks go through the engine's arrays as arrow reads them, nothing checked record by record,
    and write what the checked route writes (drops, end-of-turn rows, empty rows, per-message K, counts)."""
    source = write_jsonl(tmp_path / "in.jsonl", block_records(vocab) * 3)
    seen = checked_blocks(monkeypatch)
    summary = convert_file(source, tmp_path / "block.parquet", MODEL, 0.99, max_unmapped_rate=1.0)
    assert seen == []
    assert convert_both(source, tmp_path, monkeypatch, max_unmapped_rate=1.0) == ((tmp_path / "block.parquet").read_bytes(),) * 2
    assert summary.dropped_alternatives == 6 and summary.eot_appended > 0 and summary.rows_without_alternatives == 3


def test_messages_with_rules_of_their_own_convert_in_the_same_block(tmp_path: Path, vocab: dict[str, int], monkeypatch) -> None:
    """Given token_ids (with the end-of-turn), a chosen token that cannot be recovered (rejected), no logprobs
    at all (rejected): the same block, the same arrays, nothing checked record by record."""
    from memdistill.convert import conversion

    records = block_records(vocab)
    records.insert(1, record([item(("no-such-token\u2603", 0.9), [])], index=9))
    records.append(record([item(("4", 0.9, vocab["4"]), [])], token_ids=[vocab["4"], IM_END], index=10))
    records.append(record(None, index=11))
    source = write_jsonl(tmp_path / "in.jsonl", records)
    seen = checked_blocks(monkeypatch)
    summary = convert_file(source, tmp_path / "o.parquet", MODEL, 0.99, max_unmapped_rate=1.0)
    assert seen == [] and summary.rejected_by_reason == {"chosen_not_recovered": 1, "no_logprobs": 1}
    rows = read_like_cartridges(tmp_path / "o.parquet")
    assert list(rows[-1]["messages"][2]["token_ids"]) == [vocab["4"], IM_END]
    rejects = conversion.rejects_path(tmp_path / "o.parquet").read_text()
    assert '"kind":"chosen_not_recovered"' in rejects.replace(" ", "")


def test_figures_are_counted_per_record_across_a_block(tmp_path: Path, vocab: dict[str, int], monkeypatch) -> None:
    """A block converts all its records before its rows are written: each record's curve counts still go
    to its own row, and a rejected record in the block forgets only its own (both routes agree)."""
    from memdistill.convert import conversion
    from memdistill.convert.figures import FiguresCollector

    records = block_records(vocab)
    records.insert(2, record([item(("no-such-token\u2603", 0.9), [])], index=9))
    for name, chosen in (("clean", block_records(vocab)), ("with_reject", records)):
        source = write_jsonl(tmp_path / f"{name}.jsonl", chosen)
        figures = []
        for route in ROUTES:
            use_route(monkeypatch, route)
            collector = FiguresCollector(0.99, (0.5, 0.9))
            conversion.convert_file(source, tmp_path / f"{name}_{route}.parquet", MODEL, 0.99, max_unmapped_rate=1.0, figures=collector)
            figures.append(collector.figures)
        assert figures[0] == figures[1]
        assert figures[0].recorded_tokens_per_row == [2, 2, 1, 3]
    assert figures[0].rejected_rows == 1 and figures[0].rows == 4
