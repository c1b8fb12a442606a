"""Stats over a small hand-made dataset: every metric, the mass curve and the summary, values written out.

The dataset: three records, six assistant tokens, K = 4, converted at min_prob_mass 0.9. Each token's
top-4 probabilities (sorted) and cumulative sums are chosen away from every threshold, so the counts
below can be checked by hand:

    token  record  probs                          cumulative               total
    A      0       .60  .32  .04  .02             .60 .92 .96 .98          .98
    B      0       .96  .025 .008 .004            .96 .985 .993 .997       .997
    C      1       .42  .35  .12  .05             .42 .77 .89 .94          .94
    D      1       .98  .012 .004 .002            .98 .992 .996 .998       .998
    E      1       .55  .20  .10  .06             .55 .75 .85 .91          .91
    F      2       .72  .21  .03  .015            .72 .93 .96 .975         .975

At 0.9 convert keeps A 2, B 1, C 4 (never reaches it), D 1, E 4 (reaches .91 only with all 4), F 2:
14 entries. F's second alternative has no recoverable id (-1) and is kept.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memdistill import cli
from memdistill.convert.cartridges_io import CartridgesWriter, OutMessage, OutRow, OutTop, RowMetadata
from memdistill.convert.mass import keep_counts
from memdistill.core.errors import UserError
from memdistill.stats.figures import DEFAULT_MASS_THRESHOLDS, compute_stats, project_parquet_bytes
from memdistill.stats.file_figures import jsonl_figures, parquet_entry_bytes
from memdistill.stats.report import headline_metrics
from memdistill.stats.summary import extreme_samples, render_summary
from stages.stats import StatsConfig, load_config, run

TEACHER = {"backend": "local", "model": "smollm2-135m-instruct", "max_tokens": 3, "top_logprobs": 4}
# What the snapshots stage records about the run in every row, read back for the summary.
RUN = {"strategy": "rolling_window", "strategy_params": {"window_k": 6}, "checkpoint": "checkpoints/ep_000200",
       "snapshot": "memory_000200.jsonl", "snapshot_sha256": "0123456789abcdef0123", "max_prompt_tokens": 512}
TOKENS = {
    "A": [(101, 0.60), (102, 0.32), (103, 0.04), (104, 0.02)],
    "B": [(111, 0.96), (112, 0.025), (113, 0.008), (114, 0.004)],
    "C": [(121, 0.42), (122, 0.35), (123, 0.12), (124, 0.05)],
    "D": [(131, 0.98), (132, 0.012), (133, 0.004), (134, 0.002)],
    "E": [(141, 0.55), (142, 0.20), (143, 0.10), (144, 0.06)],
    "F": [(151, 0.72), (-1, 0.21), (153, 0.03), (154, 0.015)],
}
KEPT_AT_09 = {"A": 2, "B": 1, "C": 4, "D": 1, "E": 4, "F": 2}
RECORDS = [
    ("AB", {"sample_idx": 10, "finish_reason": "stop", "failed": False, "memory_size_chars": 100, "memory_size_entries": 2,
            "memory_coverage": 1.0}),
    ("CDE", {"sample_idx": 11, "finish_reason": "length", "failed": True, "memory_size_chars": 300, "memory_size_entries": 5,
             "memory_coverage": 0.4}),
    ("F", {"sample_idx": 12, "finish_reason": "stop"}),
]
MIN_PROB_MASS = 0.9
GENERATE_METRICS = {"samples": 3, "failures": 0, "wall_seconds": 1.5, "tokens_per_second": 4.0}


def _entry(token_id: int, prob: float) -> dict:
    entry = {"token": f"t{token_id}", "logprob": math.log(prob)}
    if token_id >= 0:
        entry["token_id"] = token_id
    return entry


def jsonl_record(names: str, metadata: dict) -> dict:
    content = []
    for name in names:
        top = [_entry(i, p) for i, p in TOKENS[name]]
        content.append({**top[0], "top_logprobs": top})
    return {
        "messages": [
            {"role": "system", "content": "You are a tutor.", "token_ids": None, "logprobs": None},
            {"role": "user", "content": f"Problem {metadata['sample_idx']}", "token_ids": None, "logprobs": None},
            {
                "role": "assistant",
                "content": "".join(f"t{TOKENS[n][0][0]}" for n in names),
                "token_ids": [TOKENS[n][0][0] for n in names],
                "logprobs": {"content": content},
            },
        ],
        "system_prompt": "You are a tutor.",
        "metadata": {**RUN, **metadata, "teacher": TEACHER},
        "type": "memory_distillation",
    }


def parquet_row(names: str, metadata: dict) -> OutRow:
    token_idx, token_id, logprobs = [], [], []
    for t, name in enumerate(names):
        for i, p in TOKENS[name][: KEPT_AT_09[name]]:
            token_idx.append(t)
            token_id.append(i)
            logprobs.append(math.log(p))
    top = OutTop(np.array(token_idx, np.int64), np.array(token_id, np.int64), np.array(logprobs, np.float32), (len(names), 4))
    ids = np.array([TOKENS[n][0][0] for n in names], np.int64)
    messages = [
        OutMessage("system", "You are a tutor.", np.array([1, 2], np.int64)),
        OutMessage("user", f"Problem {metadata['sample_idx']}", np.array([3], np.int64)),
        OutMessage("assistant", "text", ids, top),
    ]
    full = {**RUN, **metadata, "teacher": TEACHER}
    stored = RowMetadata(full["sample_idx"], full.get("finish_reason"), None, False, json.dumps(full))
    return OutRow(messages, "You are a tutor.", stored, "memory_distillation")


def write_dataset(folder: Path, rows_per_group: int = 2) -> tuple[Path, Path]:
    """The hand-made dataset as an intermediate JSONL and the parquet convert would make of it at 0.9."""
    jsonl, parquet = folder / "dataset.jsonl", folder / "dataset.parquet"
    jsonl.write_text("".join(json.dumps(jsonl_record(n, m)) + "\n" for n, m in RECORDS), encoding="utf-8")
    writer = CartridgesWriter(parquet, rows_per_group=rows_per_group)
    for names, metadata in RECORDS:
        writer.write(parquet_row(names, metadata))
    writer.close()
    return jsonl, parquet


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, Path]:
    return write_dataset(tmp_path)


@pytest.fixture
def generate_json(tmp_path: Path) -> Path:
    path = tmp_path / "generate.json"
    path.write_text(json.dumps(GENERATE_METRICS))
    return path


def test_every_metric_on_the_hand_made_dataset(dataset: tuple[Path, Path], generate_json: Path) -> None:
    jsonl, parquet = dataset
    metrics = compute_stats(jsonl, parquet, MIN_PROB_MASS, generate_json).metrics
    assert metrics == {
        "samples": 3,
        "failed_reference_samples": 1,
        "observations_cut": 0,
        # coverage 1.0 and 0.4 (record 2 predates coverage): p10 = 0.4 + 0.1 * 0.6.
        "memory": {"coverage": {"mean": 0.7, "p10": 0.46}, "share_below_half": 0.5, "samples_measured": 2},
        # tokens per sample 2, 3, 1: p95 interpolates between the 2 and the 3 (1.9 of 2 steps).
        "assistant_tokens": {"total": 6, "mean": 2.0, "p50": 2.0, "p95": 2.9},
        "top_k": 4,
        "min_prob_mass": 0.9,
        "recorded_entries": 24,
        "kept_entries": 14,
        "mean_kept_per_token": 2.3333,
        # (.92 + .96 + .94 + .98 + .91 + .93) / 6
        "mean_mass_kept": 0.94,
        "share_rows_below_min_mass": 0.0,
        # one -1 among 6 chosen ids + 14 kept ids
        "rejected_samples": 0,
        "rejected_by_reason": {},
        "unmapped_tokens": 1,
        "unmapped_rate": 0.05,
        "finish_reasons": {"length": 1, "stop": 2},
        "share_hit_max_tokens": 0.3333,
        "jsonl_bytes": jsonl.stat().st_size,
        "parquet_bytes": parquet.stat().st_size,
        "parquet_bytes_per_token": round(parquet.stat().st_size / 6, 4),
        "run": {
            "strategy": ["rolling_window"], "strategy_params": [{"window_k": 6}], "checkpoint": ["checkpoints/ep_000200"],
            "snapshot": ["memory_000200.jsonl (sha256 0123456789ab)"], "max_prompt_tokens": [512],
            "teacher": [{"backend": "local", "model": "smollm2-135m-instruct", "max_tokens": 3, "top_logprobs": 4}],
        },
        "warnings": [{"code": "memory_coverage_below_half", "message": (
            "50% of samples kept less than half of the memory rolling_window wanted under the token budget (mean coverage 0.7): "
            "lower window_k (now 6), or allow longer prompts (max_prompt_tokens was 512)"
        )}],
        "memory_gain": {"mean": None, "not_measured": "no gain file (stats --gain)"},
    }


def test_mass_curve_counts_what_convert_would_keep_at_each_threshold(dataset: tuple[Path, Path]) -> None:
    jsonl, parquet = dataset
    curve = compute_stats(jsonl, parquet, MIN_PROB_MASS).plots["mass_curve"]
    assert curve["threshold"].to_list() == list(DEFAULT_MASS_THRESHOLDS)
    assert curve["kept_entries"].to_list() == [7, 8, 9, 12, 14, 16, 19, 21, 23, 24]
    assert curve["mean_kept_per_token"].to_list() == [1.1667, 1.3333, 1.5, 2.0, 2.3333, 2.6667, 3.1667, 3.5, 3.8333, 4.0]
    # C (.94) and E (.91) stay below .95 and .97; A (.98) and F (.975) join them at .99 and .995.
    assert curve["share_rows_below"].to_list() == [0.0, 0.0, 0.0, 0.0, 0.0, 0.333333, 0.333333, 0.666667, 0.666667, 1.0]
    at_min_mass = curve.filter(curve["threshold"] == MIN_PROB_MASS).row(0, named=True)
    assert at_min_mass["projected_parquet_bytes"] == parquet.stat().st_size


def test_configured_min_prob_mass_joins_the_curve(dataset: tuple[Path, Path]) -> None:
    jsonl, parquet = dataset
    result = compute_stats(jsonl, parquet, MIN_PROB_MASS, thresholds=[0.5, 0.999])
    curve = result.plots["mass_curve"]
    assert curve["threshold"].to_list() == [0.5, 0.9, 0.999]
    assert curve["kept_entries"].to_list() == [7, 14, 24]


def test_projected_size_is_fixed_part_plus_bytes_per_entry() -> None:
    # 1000-byte file, 400 of them in the entry columns holding 20 entries: 600 fixed + 20 per entry.
    assert project_parquet_bytes([10, 20, 40], parquet_bytes=1000, entry_bytes=400, actual_kept=20) == [800, 1000, 1400]
    assert project_parquet_bytes([5], parquet_bytes=1000, entry_bytes=0, actual_kept=0) == [1000]


def test_entry_bytes_come_from_the_three_entry_columns(dataset: tuple[Path, Path]) -> None:
    _, parquet = dataset
    import pyarrow.parquet as pq

    metadata = pq.ParquetFile(parquet).metadata
    sizes: dict[str, int] = {}
    for group in range(metadata.num_row_groups):
        for column in range(metadata.num_columns):
            chunk = metadata.row_group(group).column(column)
            sizes[chunk.path_in_schema] = sizes.get(chunk.path_in_schema, 0) + chunk.total_compressed_size
    prefix = "messages.list.element.top_logprobs."
    expected = sum(sizes[f"{prefix}{name}.list.element"] for name in ("token_idx", "token_id", "logprobs"))
    assert parquet_entry_bytes(parquet) == expected
    assert 0 < expected < parquet.stat().st_size


def test_plot_tables(dataset: tuple[Path, Path]) -> None:
    plots = compute_stats(*dataset, MIN_PROB_MASS).plots
    assert plots["kept_per_token"].rows() == [(1, 2), (2, 2), (4, 2)]
    assert plots["tokens_per_sample"].rows() == [(10, 2), (11, 3), (12, 1)]
    assert plots["memory_vs_output"].rows() == [(10, 100, 2, 2), (11, 300, 5, 3), (12, None, None, 1)]
    assert plots["memory_coverage"].rows() == [(10, 1.0), (11, 0.4), (12, None)]


def test_extreme_samples_order_by_tokens_then_index(dataset: tuple[Path, Path]) -> None:
    result = compute_stats(*dataset, MIN_PROB_MASS)
    longest, shortest = extreme_samples(result.samples, count=5)
    assert longest["sample"].to_list() == [11, 10, 12]
    assert shortest["sample"].to_list() == [12, 10, 11]


def test_summary_shows_the_figures_and_extreme_samples(dataset: tuple[Path, Path], generate_json: Path) -> None:
    text = render_summary(compute_stats(*dataset, MIN_PROB_MASS, generate_json))
    assert "| samples | 3 |" in text
    assert "| kept entries | 14 of 24 recorded |" in text
    assert "| unmapped ids (-1) | 1 (5.0000%) |" in text
    assert "| finish reasons | length: 1, stop: 2 |" in text
    assert "| memory coverage, kept / wanted tokens (mean / p10) | 0.7 / 0.46 |" in text
    assert "| samples below 50% memory coverage | 50.00% |" in text
    assert "| generation: wall seconds (this run) | 1.5 |" in text
    assert "| **0.9** | 2.3333 | 0.00% |" in text
    longest = text.split("## Longest samples")[1].split("## Shortest samples")[0]
    assert [line.split("|")[1].strip() for line in longest.splitlines() if line.startswith("| 1")] == ["11", "10", "12"]
    # The run it describes, and what to look at first.
    assert "| strategy | rolling_window (window_k 6) |" in text and "| checkpoint | checkpoints/ep_000200 |" in text
    assert "| snapshot | memory_000200.jsonl (sha256 0123456789ab) |" in text
    assert "| teacher | smollm2-135m-instruct (local, max_tokens 3, top_logprobs 4) |" in text
    assert "## Warnings\n\n- 50% of samples kept less than half of the memory rolling_window wanted" in text
    assert "| answers that stopped at max_tokens | 1 (33.33%) |" in text


def test_jsonl_figures_alone(dataset: tuple[Path, Path]) -> None:
    figures = jsonl_figures(dataset[0])
    assert (figures.tokens_with_logprobs, figures.recorded_entries, figures.top_k) == (6, 24, 4)
    assert figures.samples["tokens"].to_list() == [2, 3, 1]
    # No parquet to anchor to: the raw JSONL counts.
    assert figures.mass_curve["kept_entries"].to_list()[4] == 14


def test_token_without_alternatives_counts_its_chosen_token_as_the_one_entry(tmp_path: Path) -> None:
    record = jsonl_record("A", {"sample_idx": 0, "finish_reason": "stop"})
    item = record["messages"][2]["logprobs"]["content"][0]
    item["top_logprobs"] = []
    (tmp_path / "d.jsonl").write_text(json.dumps(record) + "\n")
    figures = jsonl_figures(tmp_path / "d.jsonl", thresholds=[0.5, 0.99])
    assert figures.recorded_entries == 1
    # p = .6: reaches .5 with its one entry, stays below .99 with all (one) of them.
    assert figures.mass_curve["kept_entries"].to_list() == [1, 1]
    assert figures.mass_curve["share_rows_below"].to_list() == [0.0, 1.0]


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.lists(st.floats(min_value=0.001, max_value=1.0), min_size=1, max_size=6).map(
            lambda weights: [w / sum(weights) * 0.999 for w in weights]
        ),
        min_size=1,
        max_size=12,
    ),
    st.lists(st.sampled_from([0.3, 0.5, 0.8, 0.9, 0.95, 0.99, 0.999, 1.0]), min_size=1, max_size=4),
)
def test_mass_curve_agrees_with_converts_keep_counts(rows: list[list[float]], thresholds: list[float]) -> None:
    """The polars curve and the numpy rule convert applies (memdistill.convert.mass.keep_counts) agree."""
    K = max(len(r) for r in rows)
    dense = np.full((len(rows), K), -np.inf)
    for t, probs in enumerate(rows):
        dense[t, : len(probs)] = np.sort(np.log(probs))[::-1]
    record = {
        "messages": [
            {
                "role": "assistant",
                "content": "",
                "logprobs": {
                    "content": [
                        # Recorded in a shuffled order: stats must sort as convert does.
                        {"token": "x", "logprob": math.log(p[0]), "top_logprobs": [{"token": "x", "logprob": math.log(q)} for q in reversed(p)]}
                        for p in rows
                    ]
                },
            }
        ],
        "metadata": {},
    }
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "d.jsonl"
        path.write_text(json.dumps(record) + "\n")
        curve = jsonl_figures(path, thresholds).mass_curve
    valid = np.isfinite(dense)
    for threshold, kept in zip(curve["threshold"], curve["kept_entries"]):
        assert kept == int(keep_counts(dense, threshold, valid).sum())


def test_stage_writes_metrics_plots_and_summary(tmp_path: Path, dataset: tuple[Path, Path], generate_json: Path) -> None:
    jsonl, parquet = dataset
    params = tmp_path / "params.yaml"
    params.write_text("convert:\n  min_prob_mass: 0.9\nstats:\n  mass_thresholds: [0.5, 0.99]\n")
    out = tmp_path / "out"
    code = cli.main(
        [
            "stats", "--params", str(params), "--jsonl", str(jsonl), "--parquet", str(parquet),
            "--metrics", str(out / "metrics" / "stats.json"), "--plots-dir", str(out / "plots"),
            "--summary", str(out / "reports" / "summary.md"), "--generate-metrics", str(generate_json),
            "--detail", str(out / "reports" / "stats_detail.json"),
        ]
    )  # fmt: skip
    assert code == 0
    metrics = json.loads((out / "metrics" / "stats.json").read_text())
    detail = json.loads((out / "reports" / "stats_detail.json").read_text())
    assert metrics == headline_of(parquet)
    assert detail["min_prob_mass"] == 0.9 and detail["kept_entries"] == 14 and detail["mean_kept_per_token"] == metrics["kept_per_token"]
    # generate's figures are its own metric file; stats shows them in the summary, never repeats them.
    assert not set(metrics) & {"generation", "wall_seconds", "tokens_per_second", "failures"}
    assert "| generation: new tokens per second (this run) | 4.0 |" in (out / "reports" / "summary.md").read_text()
    assert sorted(p.name for p in (out / "plots").iterdir() if p.suffix == ".csv") == [
        "kept_per_token.csv", "mass_curve.csv", "memory_coverage.csv", "memory_gain.csv", "memory_vs_output.csv", "tokens_per_sample.csv",
    ]  # fmt: skip
    assert (out / "plots" / "mass_curve.csv").read_text().splitlines()[0] == (
        "threshold,kept_entries,mean_kept_per_token,share_rows_below,projected_parquet_bytes,projected_parquet_mb"
    )
    assert len((out / "plots" / "mass_curve.csv").read_text().splitlines()) == 4  # header + .5, .9, .99
    assert "| samples | 3 |" in (out / "reports" / "summary.md").read_text()


def headline_of(parquet: Path) -> dict:
    """metrics/stats.json of the hand-made dataset: one flat figure each, what `dvc exp show` compares."""
    return {
        "samples": 3, "failed_reference_samples": 1, "assistant_tokens": 6, "tokens_per_sample": 2.0, "share_hit_max_tokens": 0.3333,
        "coverage_mean": 0.7, "kept_per_token": 2.3333, "mass_kept": 0.94, "share_below_min_mass": 0.0,
        "parquet_mb": round(parquet.stat().st_size / 1e6, 4), "rejected_samples": 0, "unmapped_rate": 0.05,
        "memory_gain": {"mean": None, "p10": None, "p50": None, "p90": None, "share_below_0.1": None},  # no gain file
    }  # fmt: skip


def test_headline_is_flat_and_taken_from_the_report(dataset: tuple[Path, Path]) -> None:
    result = compute_stats(*dataset, MIN_PROB_MASS)
    assert result.headline == headline_of(dataset[1])
    assert all(isinstance(value, (int, float)) for key, value in result.headline.items() if key != "memory_gain")
    gained = {**result.metrics, "memory_gain": {"mean": 0.4, "p10": 0.1, "p50": 0.3, "p90": 0.9, "share_below_0.1": 0.2, "engine": "local"}}
    assert headline_metrics(gained)["memory_gain"] == {"mean": 0.4, "p10": 0.1, "p50": 0.3, "p90": 0.9, "share_below_0.1": 0.2}


def rewrite(jsonl: Path, parquet: Path, records: list[tuple[str, dict]]) -> None:
    """The hand-made dataset with other records (same tokens), as JSONL and parquet."""
    jsonl.write_text("".join(json.dumps(jsonl_record(n, m)) + "\n" for n, m in records), encoding="utf-8")
    writer = CartridgesWriter(parquet, rows_per_group=2)
    for names, metadata in records:
        writer.write(parquet_row(names, metadata))
    writer.close()


def test_most_answers_at_max_tokens_and_most_rows_below_min_mass_are_warned_about(
    dataset: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    jsonl, parquet = dataset
    rewrite(jsonl, parquet, [(n, {**m, "finish_reason": "length", "memory_coverage": 1.0}) for n, m in RECORDS])
    result = compute_stats(jsonl, parquet, MIN_PROB_MASS)
    (warning,) = result.metrics["warnings"]
    assert warning["code"] == "most_answers_hit_max_tokens" and result.headline["share_hit_max_tokens"] == 1.0
    assert warning["message"].startswith("3 of 3 answers (100%) stopped at max_tokens (3)") and "raise generate.max_tokens" in warning["message"]
    # At 0.995, 4 of 6 rows never reach the threshold within K = 4.
    at_995 = compute_stats(jsonl, parquet, 0.995, thresholds=[0.995])
    below = next(w for w in at_995.metrics["warnings"] if w["code"] == "most_rows_below_min_mass")
    assert below["message"].startswith("67% of token rows never reach min_prob_mass 0.995 within the 4 alternatives recorded")
    assert "generate.top_logprobs, now 4" in below["message"]
    assert "## Warnings" in render_summary(at_995) and below["message"] in render_summary(at_995)


def test_no_warning_when_all_is_well(dataset: tuple[Path, Path]) -> None:
    jsonl, parquet = dataset
    rewrite(jsonl, parquet, [(n, {**m, "finish_reason": "stop", "memory_coverage": 1.0}) for n, m in RECORDS])
    result = compute_stats(jsonl, parquet, MIN_PROB_MASS)
    assert result.metrics["warnings"] == [] and "## Warnings" not in render_summary(result)


def test_failed_samples_count_observations_not_rows_and_cut_observations_are_named(dataset: tuple[Path, Path]) -> None:
    jsonl, parquet = dataset
    # random_sampling: three rows answer observation 4, whose feedback failed; observation 5's was cut to the budget.
    views = [("A", {"sample_idx": 12 + i, "observation_idx": 4, "failed": True, "finish_reason": "stop"}) for i in range(3)]
    cut = ("B", {"sample_idx": 15, "observation_idx": 5, "failed": False, "finish_reason": "stop",
                 "observation_tokens": 900, "observation_tokens_kept": 300})
    rewrite(jsonl, parquet, [*views, cut])
    result = compute_stats(jsonl, parquet, MIN_PROB_MASS)
    assert result.metrics["failed_reference_samples"] == 1 and result.metrics["observations_cut"] == 1
    (warning,) = [w for w in result.metrics["warnings"] if w["code"] == "observations_cut"]
    assert warning["message"].startswith("1 of 4 samples' own observation was over the token budget and was cut")
    assert "| samples whose own observation was cut to fit the budget | 1 |" in render_summary(result)


def test_equal_lengths_say_so_once_instead_of_two_equal_tables(dataset: tuple[Path, Path]) -> None:
    jsonl, parquet = dataset
    rewrite(jsonl, parquet, [("AB", RECORDS[0][1]), ("CD", RECORDS[1][1]), ("EF", RECORDS[2][1])])
    text = render_summary(compute_stats(jsonl, parquet, MIN_PROB_MASS))
    assert "Every answer has 2 assistant tokens." in text
    assert "## Longest samples" not in text and "## Shortest samples" not in text


def test_flags_override_params(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("convert:\n  min_prob_mass: 0.9\n")
    assert load_config(params) == StatsConfig(min_prob_mass=0.9, mass_thresholds=list(DEFAULT_MASS_THRESHOLDS))
    assert load_config(params, {"min_prob_mass": 0.95, "mass_thresholds": [0.6]}) == StatsConfig(min_prob_mass=0.95, mass_thresholds=[0.6])
    assert load_config(None) == StatsConfig()
    params.write_text("stats:\n  mass_tresholds: [0.5]\n")
    with pytest.raises(UserError, match=r"params\.yaml: stats\.mass_tresholds: unknown parameter"):
        load_config(params)


def test_missing_generate_metrics_means_no_generation_figures(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    result = compute_stats(*dataset, MIN_PROB_MASS, tmp_path / "absent.json")
    assert result.generation == {}
    assert "generation:" not in render_summary(result)


def test_bad_jsonl_line_is_one_error_naming_the_line_and_writes_nothing(
    tmp_path: Path, dataset: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    jsonl, parquet = dataset
    lines = jsonl.read_text().splitlines()
    lines[1] = lines[1][:-5]
    jsonl.write_text("\n".join(lines) + "\n")
    metrics = tmp_path / "stats.json"
    code = cli.main(["stats", "--jsonl", str(jsonl), "--parquet", str(parquet), "--metrics", str(metrics)])
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and f"{jsonl}:2:" in error
    assert not metrics.exists()


def test_wrong_field_type_is_a_user_error(tmp_path: Path, dataset: tuple[Path, Path]) -> None:
    jsonl, parquet = dataset
    record = jsonl_record("A", {"sample_idx": 0, "finish_reason": 7})
    record["messages"][2]["logprobs"]["content"][0]["logprob"] = "high"
    jsonl.write_text(json.dumps(record) + "\n")
    with pytest.raises(UserError, match=str(jsonl)):
        compute_stats(jsonl, parquet, MIN_PROB_MASS)


def test_stale_parquet_is_reported(tmp_path: Path, dataset: tuple[Path, Path]) -> None:
    jsonl, parquet = dataset
    jsonl.write_text(jsonl.read_text().splitlines()[0] + "\n")
    with pytest.raises(UserError, match="stale"):
        compute_stats(jsonl, parquet, MIN_PROB_MASS)


def test_min_prob_mass_out_of_range(dataset: tuple[Path, Path]) -> None:
    with pytest.raises(UserError, match="min_prob_mass"):
        compute_stats(*dataset, 1.5)


def test_missing_file(tmp_path: Path, dataset: tuple[Path, Path]) -> None:
    with pytest.raises(UserError, match="file not found"):
        compute_stats(tmp_path / "nope.jsonl", dataset[1], MIN_PROB_MASS)


def test_run_leaves_previous_outputs_when_it_fails(tmp_path: Path, dataset: tuple[Path, Path]) -> None:
    jsonl, parquet = dataset
    metrics = tmp_path / "stats.json"
    metrics.write_text("{}\n")
    with pytest.raises(UserError):
        run(jsonl, tmp_path / "absent.parquet", metrics, tmp_path / "plots", tmp_path / "summary.md")
    assert metrics.read_text() == "{}\n"
    assert not (tmp_path / "plots").exists() and not (tmp_path / "summary.md").exists()


def test_stats_over_a_real_convert_output(tmp_path: Path) -> None:
    """convert_file on the hand-made JSONL: the curve at min_prob_mass lands on what the parquet holds.

    Records 0 and 2 stopped without an end-of-turn token, so convert appends one at logprob 0 (one kept
    entry each): 8 tokens and 14 + 2 entries; the JSONL's curve is shifted by those 2 at every threshold.
    Token F's unrecoverable alternative (-1, p 0.21) leaves its row: the rest (0.765) never reaches 0.9, so
    all three remaining are kept (one more than the JSONL's rule) and the parquet holds no -1 at all.
    """
    from memdistill.convert.conversion import convert_file

    jsonl, _ = write_dataset(tmp_path)
    parquet = tmp_path / "converted.parquet"
    convert_file(jsonl, parquet, "smollm2-135m-instruct", MIN_PROB_MASS, max_unmapped_rate=1.0)
    result = compute_stats(jsonl, parquet, MIN_PROB_MASS)
    assert result.metrics["assistant_tokens"]["total"] == 8
    assert result.metrics["kept_entries"] == 17
    assert result.metrics["unmapped_tokens"] == 0
    curve = result.plots["mass_curve"]
    assert curve["kept_entries"].to_list() == [10, 11, 12, 15, 17, 19, 22, 24, 26, 27]
    assert curve["mean_kept_per_token"].to_list()[4] == 2.125
    assert curve["projected_parquet_bytes"].to_list()[4] == parquet.stat().st_size


def test_logprobs_in_another_shape_names_the_line(tmp_path: Path, dataset: tuple[Path, Path]) -> None:
    jsonl, parquet = dataset
    lines = jsonl.read_text().splitlines()
    record = json.loads(lines[2])
    record["messages"][2]["logprobs"] = record["messages"][2]["logprobs"]["content"]
    lines[2] = json.dumps(record)
    jsonl.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=rf"{jsonl}:3: messages\[2\]\.logprobs must be an object"):
        compute_stats(jsonl, parquet, MIN_PROB_MASS)


def test_parquet_with_struct_metadata(tmp_path: Path, dataset: tuple[Path, Path]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    jsonl, parquet = dataset
    table = pq.read_table(parquet)
    # A struct written by another tool (no `json` field): its own fields are read.
    structs = pa.array([{**json.loads(stored["json"]), "extra": [1, 2]} for stored in table["metadata"].to_pylist()])
    pq.write_table(table.set_column(2, "metadata", structs), parquet)
    metrics = compute_stats(jsonl, parquet, MIN_PROB_MASS).metrics
    assert metrics["failed_reference_samples"] == 1 and metrics["finish_reasons"] == {"length": 1, "stop": 2}


def test_a_min_prob_mass_other_than_converts_is_warned_about(dataset: tuple[Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    compute_stats(*dataset, MIN_PROB_MASS)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    compute_stats(*dataset, 0.99)
    assert "holds 14 kept entries but min_prob_mass 0.99 would keep 21" in caplog.text


def test_rejected_samples_are_counted_and_left_out_of_the_comparison(tmp_path: Path, dataset: tuple[Path, Path]) -> None:
    jsonl, parquet = dataset
    before = compute_stats(jsonl, parquet, MIN_PROB_MASS).metrics
    assert before["rejected_samples"] == 0 and before["rejected_by_reason"] == {}
    # One more JSONL record that convert rejected: the parquet does not hold it, the rejects file names it.
    lines = jsonl.read_text().splitlines()
    jsonl.write_text("\n".join(lines + [lines[0]]) + "\n")
    with pytest.raises(UserError, match="stale"):
        compute_stats(jsonl, parquet, MIN_PROB_MASS)
    reject = {"record": len(lines), "where": f"{jsonl}:{len(lines) + 1}", "sample_idx": 0, "kind": "chosen_not_recovered", "reason": "x"}
    parquet.with_name(parquet.name + ".rejects.jsonl").write_text(json.dumps(reject) + "\n")
    after = compute_stats(jsonl, parquet, MIN_PROB_MASS).metrics
    assert after["rejected_samples"] == 1 and after["rejected_by_reason"] == {"chosen_not_recovered": 1}
    assert after["samples"] == before["samples"] and after["recorded_entries"] == before["recorded_entries"]


def test_a_jsonl_mixing_raw_and_tempered_logprobs_is_refused(dataset: tuple[Path, Path]) -> None:
    jsonl, parquet = dataset
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    for record, mode in zip(records, ["tempered", "raw", "tempered"]):
        record["metadata"]["teacher"] = {**record["metadata"].get("teacher", {}), "logprobs": mode}
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(UserError, match=r"records mix logprob contracts \(raw, tempered"):
        compute_stats(jsonl, parquet, MIN_PROB_MASS)
