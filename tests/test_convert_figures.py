"""convert's figures side output: the counts match convert's own rule, and stats reads them instead of the JSONL."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from memdistill import cli
from memdistill.convert.cartridges_io import OutMessage, OutRow, OutTop
from memdistill.convert.figures import FiguresCollector, figures_path, mass_curve_counts, mass_curve_row_counts, read_figures
from memdistill.convert.mass import flatten_by_mass
from memdistill.core.errors import UserError
from memdistill.stats import figures as stats_module
from memdistill.stats.figures import compute_stats
from stages.convert import ConvertConfig
from stages.convert import run as convert_run
from tests import test_stats
from tests.test_stats import MIN_PROB_MASS, write_dataset

THRESHOLDS = (0.3, 0.5, 0.8, 0.9, 0.95, 0.99, 0.999, 1.0)
# [rows, K] top-k logprobs, -inf where a row has fewer entries.
LOGPROB_ROWS = hnp.arrays(
    np.float64,
    hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=8),
    elements=st.one_of(st.floats(min_value=-12.0, max_value=0.0), st.just(-np.inf)),
)


@settings(max_examples=60, deadline=None)
@given(
    LOGPROB_ROWS,
)
def test_curve_counts_are_what_flatten_by_mass_keeps(logprobs: np.ndarray) -> None:
    """At every threshold, the count is exactly the entries convert's flatten_by_mass keeps there."""
    kept, below = mass_curve_counts(logprobs, np.array(THRESHOLDS))
    ids = np.arange(logprobs.size, dtype=np.int64).reshape(logprobs.shape)
    mass = np.exp(np.where(np.isfinite(logprobs), logprobs, -np.inf).astype(np.float32).astype(np.float64)).sum(axis=1)
    for threshold, count, rows in zip(THRESHOLDS, kept, below):
        assert count == flatten_by_mass(logprobs, ids, threshold).token_id.size
        assert rows == int((mass < threshold).sum())


@settings(max_examples=60, deadline=None)
@given(
    LOGPROB_ROWS,
    st.integers(min_value=0, max_value=5),
)
def test_row_counts_sum_to_the_message_counts_at_any_padding(logprobs: np.ndarray, extra: int) -> None:
    """convert's block path pads every message to the block's widest K and counts per row: the per-row
    counts sum to the message's, and padding changes neither them nor what flatten_by_mass keeps."""
    thresholds = np.array(THRESHOLDS)
    padded = np.hstack([logprobs, np.full((logprobs.shape[0], extra), -np.inf)])
    kept, below = mass_curve_row_counts(padded, thresholds)
    expected_kept, expected_below = mass_curve_counts(logprobs, thresholds)
    assert kept.sum(axis=0).tolist() == expected_kept.tolist()
    assert below.sum(axis=0).tolist() == expected_below.tolist()
    ids = np.arange(padded.size, dtype=np.int64).reshape(padded.shape)
    for threshold in THRESHOLDS:
        narrow, wide = flatten_by_mass(logprobs, ids[:, : logprobs.shape[1]], threshold), flatten_by_mass(padded, ids, threshold)
        assert narrow.token_idx.tolist() == wide.token_idx.tolist() and narrow.token_id.tolist() == wide.token_id.tolist()
        assert narrow.logprobs.tobytes() == wide.logprobs.tobytes()


def _row(token_ids: list[int], top: OutTop | None) -> OutRow:
    return OutRow([OutMessage("user", "q", np.array([1], np.int64)), OutMessage("assistant", "a", np.array(token_ids, np.int64), top)], "", "{}", "")


def test_collector_counts_written_rows_and_forgets_rejected_ones() -> None:
    collector = FiguresCollector(0.9, [0.5])
    # A rejected record's messages were counted, then the record was not written.
    collector.add_token_rows(np.log(np.array([[0.6, 0.3, 0.1]])))
    collector.drop_row()
    collector.add_token_rows(np.array([np.log([0.62, 0.3, 0.08]), [np.log(0.95), np.log(0.05), -np.inf]]))
    top = OutTop(np.array([0, 0, 1]), np.array([7, -1, 8]), np.log(np.array([0.62, 0.3, 0.95], np.float32)), (2, 3))
    collector.add_row(_row([7, 8], top))
    figures = collector.figures
    assert figures.thresholds == [0.5, 0.9]
    # .62 then .92 reaches .5 with one entry and .9 with two; .95 reaches both with one.
    assert figures.kept_at == [1 + 1, 2 + 1] and figures.rows_below == [0, 0]
    assert (figures.rows, figures.rejected_rows, figures.tokens_with_logprobs, figures.recorded_entries, figures.recorded_top_k) == (1, 1, 2, 5, 3)
    assert (figures.kept_entries, figures.unmapped_kept, figures.unmapped_chosen, figures.tokens_per_row) == (3, 1, 0, [2])
    assert figures.mass_kept_sum == pytest.approx(0.92 + 0.95, abs=1e-6) and figures.tokens_with_entries == 2
    # A record whose assistant message has no logprobs: its tokens count, bare.
    collector.add_row(_row([-1, 5, 6], None))
    assert figures.tokens_per_row == [2, 3] and figures.recorded_tokens_per_row == [2, 3] and figures.unmapped_chosen == 1
    assert collector._histogram.tolist() == [0, 1, 1]


@pytest.fixture
def converted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, Path]:
    """The hand-made dataset of test_stats, converted by the convert stage at 0.9 (figures beside it).

    Its token F has an alternative without an id, which convert drops (the figures count what convert
    keeps) while the JSONL pass counts every recorded entry: here that alternative gets an id, so both
    ways must give the same figures."""
    monkeypatch.setitem(test_stats.TOKENS, "F", [(151, 0.72), (152, 0.21), (153, 0.03), (154, 0.015)])
    jsonl, _ = write_dataset(tmp_path)
    parquet = tmp_path / "converted.parquet"
    # One file (no validation split): the comparison is of stats over that one parquet.
    convert_run(ConvertConfig(model="smollm2-135m-instruct", min_prob_mass=MIN_PROB_MASS, max_unmapped_rate=1.0, validation_fraction=0),
                jsonl, parquet)
    return jsonl, parquet, figures_path(parquet)


def test_stats_from_figures_equal_stats_from_the_files(converted: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    jsonl, parquet, figures = converted
    assert figures.name == "converted.figures.json" and figures.is_file()
    # Not 0.6: token A's .60 sits exactly on it, where the figures follow convert's float32 decision
    # (keeps 2) and the JSONL pass its float64 one (keeps 1).
    thresholds = [0.5, 0.7, 0.8, 0.95, 0.97, 0.99, 0.995, 0.999]
    from_files = compute_stats(jsonl, parquet, MIN_PROB_MASS, thresholds=thresholds)

    def no_reading(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("stats parsed the JSONL or the parquet's entries")

    monkeypatch.setattr(stats_module, "jsonl_figures", no_reading)
    monkeypatch.setattr(stats_module, "parquet_figures", no_reading)
    monkeypatch.setattr(pl, "scan_ndjson", no_reading)
    from_figures = compute_stats(jsonl, parquet, MIN_PROB_MASS, thresholds=thresholds, figures=figures)
    assert from_figures.metrics == from_files.metrics
    assert from_figures.metrics["kept_entries"] == 16 and from_figures.metrics["recorded_entries"] == 24
    for name, frame in from_files.plots.items():
        assert from_figures.plots[name].equals(frame), name
    assert from_figures.samples.equals(from_files.samples)


def test_thresholds_convert_did_not_count_fall_back_to_the_jsonl(converted: tuple[Path, Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    jsonl, parquet, figures = converted
    result = compute_stats(jsonl, parquet, MIN_PROB_MASS, thresholds=[0.42], figures=figures)
    assert "not at [0.42]" in caplog.text
    assert result.plots["mass_curve"]["threshold"].to_list() == [0.42, 0.9]
    assert result.metrics == compute_stats(jsonl, parquet, MIN_PROB_MASS, thresholds=[0.42]).metrics


def test_figures_of_other_files_are_not_used(converted: tuple[Path, Path, Path]) -> None:
    jsonl, parquet, figures = converted
    jsonl.write_text(jsonl.read_text().splitlines()[0] + "\n")
    # The JSONL changed after convert: the figures are stale, the files are read, and they disagree.
    with pytest.raises(UserError, match="stale"):
        compute_stats(jsonl, parquet, MIN_PROB_MASS, figures=figures)


def test_damaged_figures_file_is_one_error_naming_it(converted: tuple[Path, Path, Path]) -> None:
    jsonl, parquet, figures = converted
    figures.write_text('{"format": "something else"}\n')
    with pytest.raises(UserError, match=rf"{figures}: expected convert's figures"):
        compute_stats(jsonl, parquet, MIN_PROB_MASS, figures=figures)
    figures.write_text("{not json")
    with pytest.raises(UserError, match=rf"{figures}:1: not valid JSON"):
        read_figures(figures)


def test_cli_counts_at_stats_thresholds_and_min_prob_mass(tmp_path: Path) -> None:
    jsonl, _ = write_dataset(tmp_path)
    params = tmp_path / "params.yaml"
    params.write_text("convert:\n  min_prob_mass: 0.9\n  max_unmapped_rate: 1.0\nstats:\n  mass_thresholds: [0.5, 0.99]\n")
    out = tmp_path / "out.parquet"
    code = cli.main(["convert", "--params", str(params), "--input", str(jsonl), "--output", str(out), "--figures", str(tmp_path / "f.json")])
    assert code == 0
    figures = read_figures(tmp_path / "f.json")
    assert figures.thresholds == [0.5, 0.9, 0.99]
    # The hand-made curve (test_stats) at .5, .9 and .99 is 7, 14 and 21 of the 24 recorded entries; convert
    # drops token F's alternative without an id (.21), so F keeps .72+.03+.015 (3) at .9 and 3 at .99.
    assert figures.kept_at == [7, 15, 20] and figures.recorded_entries == 23
    assert json.loads((tmp_path / "f.json").read_text())["format"] == "memdistill.convert_figures/1"


def test_bad_stats_thresholds_in_params_fail_convert_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    jsonl, _ = write_dataset(tmp_path)
    params = tmp_path / "params.yaml"
    params.write_text("stats:\n  mass_thresholds: [0.5, high]\n")
    out = tmp_path / "out.parquet"
    assert cli.main(["convert", "--params", str(params), "--input", str(jsonl), "--output", str(out)]) == 2
    assert "stats.mass_thresholds" in capsys.readouterr().err
    assert not out.exists()
