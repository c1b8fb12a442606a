"""`memdistill inspect`: one record token by token from either format, file-level figures, bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memdistill import cli
from memdistill.core.errors import UserError
from memdistill.stats.inspect import id_decoder, parquet_token_rows, probability_style, read_record, render_record
from tests.test_stats import write_dataset


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, Path]:
    # One record per row group, so reading record 2 must find the third group.
    return write_dataset(tmp_path, rows_per_group=1)


def _table_rows(output: str) -> list[list[str]]:
    """The token table lines after the header, split on runs of two or more spaces."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("pos"))
    return [re.split(r"\s{2,}", line.strip()) for line in lines[start + 1 :] if line.strip()]


def test_jsonl_record_shows_messages_then_token_table(dataset: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["inspect", str(dataset[0]), "--sample", "1", "--alternatives"]) == 0
    out = capsys.readouterr().out
    assert "sample_idx=11" in out and "finish_reason=length" in out
    assert out.index("── system ──") < out.index("── user ──") < out.index("── assistant ──") < out.index("recorded alternatives")
    assert "Problem 11" in out
    rows = _table_rows(out)
    assert [row[:4] for row in rows] == [["0", "'t121'", "121", "0.420"], ["1", "'t131'", "131", "0.980"], ["2", "'t141'", "141", "0.550"]]
    assert rows[0][4:] == ["'t121' 0.420", "'t122' 0.350", "'t123' 0.120", "'t124' 0.050"]


def test_table_columns_are_aligned(dataset: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    cli.main(["inspect", str(dataset[0]), "--sample", "1"])
    lines = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("pos"))
    table = lines[start : start + 4]
    # The probability column ends at the same character on the header and every row.
    ends = {line.index("prob") + 4 if i == 0 else line.index("0.", 10) + 5 for i, line in enumerate(table)}
    assert len(ends) == 1


def test_parquet_record_shows_kept_entries_by_id_without_tokenizer(dataset: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["inspect", str(dataset[1]), "--sample", "2", "--no-decode", "--alternatives"]) == 0
    out = capsys.readouterr().out
    assert "sample_idx=12" in out and "kept alternatives" in out
    rows = _table_rows(out)
    # F keeps two entries at 0.9, the second without a recoverable id.
    assert rows == [["0", "'151'", "151", "0.720", "'151' 0.720", "'-1' 0.210"]]


def test_parquet_chosen_token_missing_from_kept_entries_shows_a_dash() -> None:
    message = {"role": "assistant", "token_ids": [5, 6], "top_logprobs": {"token_idx": [0, 1], "token_id": [5, 9], "logprobs": [-0.1, -0.2], "shape": [2, 4]}}
    rows = parquet_token_rows(message, None)
    assert rows[0].prob == pytest.approx(0.904837, abs=1e-6)
    assert rows[1].prob is None and rows[1].alternatives == [("9", pytest.approx(0.818731, abs=1e-6))]
    text = render_record({"messages": [{"content": "ab", **message}]})
    assert "     —" in text.splitlines()[-1]


def test_parquet_ids_decoded_with_the_recorded_teacher(dataset: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    decode = id_decoder("smollm2-135m-instruct")
    assert decode is not None
    assert cli.main(["inspect", str(dataset[1]), "--sample", "2", "--alternatives"]) == 0
    rows = _table_rows(capsys.readouterr().out)
    assert rows[0][1] == repr(decode(151)) and rows[0][2] == "151"
    assert rows[0][5] == "'<unmapped>' 0.210"


def test_unloadable_tokenizer_falls_back_to_ids(tmp_path: Path) -> None:
    assert id_decoder(str(tmp_path / "no-such-tokenizer")) is None
    assert id_decoder(None) is None


def test_parquet_read_touches_one_row_group(dataset: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    groups: list[list[int]] = []
    original = pq.ParquetFile.iter_batches

    def spy(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        groups.append(kwargs.get("row_groups"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    monkeypatch.setattr(pq.ParquetFile, "read", lambda *a, **k: pytest.fail("read the whole file"))
    record = read_record(dataset[1], 2)
    assert record["metadata"]["sample_idx"] == 12
    assert groups == [[2]]


def test_jsonl_is_streamed_up_to_the_record(tmp_path: Path, dataset: tuple[Path, Path]) -> None:
    # A damaged line after the record does not matter: the file is read only as far as needed.
    path = tmp_path / "long.jsonl"
    path.write_text(dataset[0].read_text() + "{not json\n")
    assert read_record(path, 0)["metadata"]["sample_idx"] == 10
    with pytest.raises(UserError, match=rf"{re.escape(str(path))}:4: not valid JSON"):
        read_record(path, 3)


def test_summary_of_parquet(dataset: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["inspect", str(dataset[1]), "--summary"]) == 0
    out = capsys.readouterr().out
    table, lineage = out.split("\n\n", 1)  # the figures, then the lineage (printed after a blank line)
    figures = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in table.splitlines()[1:] if line.strip())
    assert lineage.startswith("lineage (1 distinct over the rows)") and "footer: no lineage recorded" in lineage
    assert figures["samples"] == "3"
    assert figures["assistant tokens"] == "6 (mean 2.0, max 3)"
    assert figures["kept entries"] == "14 (2.33 per token)"
    assert figures["mean probability mass kept"] == "0.9400"
    assert figures["unmapped ids (-1)"] == "1"
    assert figures["finish reasons"] == "length: 1, stop: 2"
    assert figures["failed reference samples"] == "1"


def test_summary_of_jsonl_includes_the_mass_curve(dataset: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["inspect", str(dataset[0]), "--summary"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"recorded top-K entries\s+24", out)
    curve = {line.split()[0]: line.split()[1] for line in out.splitlines() if re.match(r"\s+0\.\d+\s+\d", line)}
    assert curve["0.9"] == "2.333" and curve["0.999"] == "4.000" and curve["0.5"] == "1.167"


@pytest.mark.parametrize("sample", ["3", "-1"])
def test_sample_out_of_range_is_one_error_line(dataset: tuple[Path, Path], sample: str, capsys: pytest.CaptureFixture[str]) -> None:
    for path in dataset:
        assert cli.main(["inspect", str(path), "--sample", sample]) == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and "--sample" in error


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["inspect", str(tmp_path / "none.parquet")]) == 2
    assert "file not found" in capsys.readouterr().err


def test_long_content_is_truncated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "x" * 50}]}) + "\n")
    assert cli.main(["inspect", str(path), "--max-chars", "10"]) == 0
    assert "xxxxxxxxxx… [40 more chars]" in capsys.readouterr().out


def test_alternatives_only_on_demand_and_no_colour_codes_in_a_pipe(dataset: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["inspect", str(dataset[0]), "--sample", "1"]) == 0
    out = capsys.readouterr().out
    assert "\x1b[" not in out and "alternatives" not in out
    assert _table_rows(out)[0] == ["0", "'t121'", "121", "0.420"]
    # The coloured token view and its legend are for terminals; a pipe gets the table alone.
    assert "token colour = probability" not in out


def test_colour_follows_probability(dataset: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["inspect", str(dataset[0]), "--sample", "1", "--color", "always"]) == 0
    out = capsys.readouterr().out
    assert "token colour = probability" in out
    # t121 was drawn at .42 (red-yellow), t131 at .98 (green): truecolor codes of the ramp.
    assert "\x1b[38;2;255;181;0mt121" in out
    assert "\x1b[38;2;10;215;0mt131" in out


@settings(max_examples=50, deadline=None)
@given(st.floats(min_value=0.0, max_value=1.0), st.floats(min_value=0.0, max_value=1.0))
def test_more_probable_is_never_redder(p: float, q: float) -> None:
    low, high = sorted((p, q))
    a, b = probability_style(low).color.triplet, probability_style(high).color.triplet
    assert b.red <= a.red and b.green >= a.green


def test_vllm_token_id_strings_are_shown_as_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    decode = id_decoder("smollm2-135m-instruct")
    assert decode is not None
    items = [{"token": f"token_id:{i}", "logprob": -0.1, "top_logprobs": [{"token": f"token_id:{i}", "logprob": -0.1}, {"token": "token_id:30", "logprob": -2.5}]}
             for i in (28, 29)]
    record = {"messages": [{"role": "assistant", "content": "", "logprobs": {"content": items}}], "metadata": {"teacher": {"model": "smollm2-135m-instruct"}}}
    path = tmp_path / "vllm.jsonl"
    path.write_text(json.dumps(record) + "\n")
    assert cli.main(["inspect", str(path), "--alternatives"]) == 0
    rows = _table_rows(capsys.readouterr().out)
    assert [row[1:3] for row in rows] == [[repr(decode(28)), "28"], [repr(decode(29)), "29"]]
    assert rows[0][5] == f"{decode(30)!r} 0.082"
    # Without a tokenizer the strings stay as they were recorded.
    assert cli.main(["inspect", str(path), "--no-decode"]) == 0
    assert _table_rows(capsys.readouterr().out)[0][1] == "'token_id:28'"
