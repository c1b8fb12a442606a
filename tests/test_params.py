"""Stage parameters as pydantic models: params.yaml and flags validated alike, one set of defaults."""

from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path
from typing import Any, Literal

import annotated_types
import pytest
import yaml

from memdistill.cli import build_parser
from memdistill.cli import main as cli_main
from memdistill.core import params
from memdistill.core.errors import UserError
from stages import stage_configs
from stages.convert import ConvertConfig
from stages.generate import GenerateConfig
from stages.snapshots import SnapshotsConfig
from stages.stats import StatsConfig

REPO = Path(__file__).resolve().parent.parent
# The flags each subcommand needs besides its parameters.
REQUIRED = {
    "snapshots": ["--output", "p.jsonl"],
    "generate": ["--input", "p.jsonl", "--output", "d.jsonl"],
    "gain": ["--prompts", "p.jsonl", "--input", "d.jsonl", "--output", "g.parquet"],
    "convert": ["--input", "d.jsonl", "--output", "d.parquet"],
    "stats": ["--jsonl", "d.jsonl", "--parquet", "d.parquet", "--metrics", "m.json"],
    "push": [],
}


def write_params(tmp_path: Path, sections: dict[str, Any]) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(sections), encoding="utf-8")
    return path


def parse(command: str, *flags: str) -> argparse.Namespace:
    return build_parser(command).parse_args([command, *REQUIRED[command], *flags])


def test_every_params_yaml_key_is_a_model_field() -> None:
    sections = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    models = {model.section: model for model in stage_configs()}
    assert set(sections) == set(models)
    for section, values in sections.items():
        assert set(values) <= set(models[section].model_fields) - set(models[section].borrowed), section
    assert params.check_file(REPO / "params.yaml", stage_configs()) == ["snapshots", "generate", "gain", "convert", "stats", "push"]


@pytest.mark.parametrize("model", stage_configs(), ids=lambda m: m.section)
def test_flag_defaults_are_the_model_defaults(model: type[params.StageParams]) -> None:
    """Without a params file and without flags, a stage runs with exactly the model's defaults."""
    args = parse(model.section)
    assert params.flag_values(args, model) == {}
    assert params.build(model, None, params.flag_values(args, model)) == model()


@pytest.mark.parametrize("model", stage_configs(), ids=lambda m: m.section)
def test_every_field_has_a_flag_with_its_description_and_default(model: type[params.StageParams]) -> None:
    # argparse wraps lines (also after a hyphen): compare with all white space removed.
    help_text = "".join(build_parser(model.section)._subparsers._group_actions[0].choices[model.section].format_help().split())
    for name, field in model.model_fields.items():
        assert f"--{name.replace('_', '-')}" in help_text
        assert field.description and "".join(field.description.split()) in help_text, name
        assert "".join(f"default {params._shown(field.get_default(call_default_factory=True))}]".split()) in help_text, name


def _wrong_type(field: Any) -> Any:
    base, _ = params._non_null(field.annotation)
    if typing.get_origin(base) is Literal or base is str:
        return 5
    if base is bool:
        return "no"
    if base in (int, float) or typing.get_origin(base) in (typing.Union, types.UnionType):
        return "abc"  # also for int | Literal["auto"]: neither a number nor the word
    return 5  # lists, mappings


def _out_of_range(field: Any) -> Any | None:
    base, _ = params._non_null(field.annotation)
    if typing.get_origin(base) is Literal:
        return "no-such-choice"
    metadata = list(field.metadata)
    if typing.get_origin(base) in (typing.Union, types.UnionType):  # Annotated[int, Field(ge=1)] | Literal["auto"]
        for member in typing.get_args(base):
            if typing.get_origin(member) is typing.Annotated:
                metadata += [c for extra in typing.get_args(member)[1:] for c in getattr(extra, "metadata", [extra])]
    for constraint in metadata:
        if isinstance(constraint, annotated_types.Ge):
            return constraint.ge - 1
        if isinstance(constraint, annotated_types.Gt):
            return constraint.gt
        if isinstance(constraint, annotated_types.Le):
            return constraint.le + 1
    return None


FIELDS = [(model, name) for model in stage_configs() for name in model.model_fields]


@pytest.mark.parametrize(("model", "name"), FIELDS, ids=[f"{m.section}.{n}" for m, n in FIELDS])
def test_every_field_rejects_a_wrong_type_and_an_out_of_range_value(model: type[params.StageParams], name: str, tmp_path: Path) -> None:
    field = model.model_fields[name]
    section = model.borrowed.get(name, model.section)
    for bad in (_wrong_type(field), _out_of_range(field)):
        if bad is None:
            continue  # a free string or an unbounded integer such as a seed has no range
        path = write_params(tmp_path, {section: {name: bad}})
        with pytest.raises(UserError) as caught:
            params.build(model, path, {})
        message = str(caught.value)
        assert message.startswith(f"{path}: {section}.{name}: "), message
        assert "\n" not in message


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        # The values issue 13 found ending in tracebacks or silently accepted.
        ("generate", "max_tokens", "abc", 'generate.max_tokens: expected an integer >= 1, got "abc"'),
        ("generate", "temperature", "hot", 'generate.temperature: expected a number >= 0, got "hot"'),
        ("generate", "max_failure_rate", "x", 'generate.max_failure_rate: expected a number in [0, 1], got "x"'),
        ("generate", "timeout", None, "generate.timeout: expected a number > 0, got null"),
        ("generate", "metrics", 5, "generate.metrics: expected a string or null, got 5"),
        ("generate", "top_p", 1.5, "generate.top_p: expected a number in (0, 1], got 1.5"),
        ("generate", "max_retries", 1.5, "generate.max_retries: expected an integer >= 0, got 1.5"),
        ("generate", "use_cache", "no", 'generate.use_cache: expected true or false, got "no"'),
        ("convert", "model", 5, "convert.model: expected a string or null, got 5"),
        ("convert", "rows_per_group", True, "convert.rows_per_group: expected an integer >= 1, got true"),
        ("snapshots", "failure_patterns", [""], "snapshots.failure_patterns: '' matches the empty string"),
        ("convert", "min_prob_mass", "high", 'convert.min_prob_mass: expected a number in (0, 1], got "high"'),
    ],
)
def test_issue_values_are_one_line_naming_file_section_and_key(
    section: str, key: str, value: Any, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_params(tmp_path, {section: {key: value}})
    assert cli_main(["params", "--check", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"memdistill params: error: {path}: {message}"]


def test_generate_stage_rejects_bad_params_before_writing_anything(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_params(tmp_path, {"generate": {"metrics": 5}})
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("")
    code = cli_main(["generate", "--params", str(path), "--input", str(prompts), "--output", str(tmp_path / "d.jsonl")])
    assert code == 2
    assert capsys.readouterr().err.strip() == f"memdistill generate: error: {path}: generate.metrics: expected a string or null, got 5"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml", "prompts.jsonl"]


def test_flags_override_the_file_and_errors_name_the_flag(tmp_path: Path) -> None:
    path = write_params(tmp_path, {"convert": {"min_prob_mass": 0.9, "strict": True}, "stats": {"mass_thresholds": [0.5]}})
    args = parse("convert", "--params", str(path), "--min-prob-mass", "0.95", "--no-strict")
    config = params.build(ConvertConfig, path, params.flag_values(args, ConvertConfig))
    assert config == ConvertConfig(min_prob_mass=0.95, strict=False, mass_thresholds=[0.5])  # stats.mass_thresholds is borrowed
    args = parse("convert", "--min-prob-mass", "1.5")
    with pytest.raises(UserError, match=r"^--min-prob-mass: expected a number in \(0, 1\], got 1\.5$"):
        params.build(ConvertConfig, path, params.flag_values(args, ConvertConfig))
    # stats borrows convert.min_prob_mass: what convert used is what stats reports.
    assert params.build(StatsConfig, path, {}) == StatsConfig(min_prob_mass=0.9, mass_thresholds=[0.5])
    args = parse("stats", "--mass-thresholds", "0.6,0.7", "0.8")
    assert params.flag_values(args, StatsConfig) == {"mass_thresholds": [0.6, 0.7, 0.8]}


def test_null_flags_and_list_flags(tmp_path: Path) -> None:
    args = parse("snapshots", "--max-prompt-tokens", "null", "--redact-patterns", "sk-[a-z]+", "--window-k", "3")
    assert params.flag_values(args, SnapshotsConfig) == {"max_prompt_tokens": None, "redact_patterns": ["sk-[a-z]+"], "window_k": 3}
    args = parse("generate", "--no-cache", "--base-url", "http://a/v1", "http://b/v1")
    assert params.flag_values(args, GenerateConfig) == {"use_cache": False, "base_url": ["http://a/v1", "http://b/v1"]}


def test_checks_across_fields(tmp_path: Path) -> None:
    path = write_params(tmp_path, {"generate": {"backend": "openai"}})
    with pytest.raises(UserError, match=r"generate\.base_url: the openai backend needs at least one server URL"):
        params.build(GenerateConfig, path, {})
    path = write_params(tmp_path, {"generate": {"backend": "openai", "base_url": "http://x/v1", "top_logprobs": 21}})
    with pytest.raises(UserError, match=r"generate\.top_logprobs: OpenAI servers accept 0\.\.20, got 21"):
        params.build(GenerateConfig, path, {})
    path = write_params(tmp_path, {"generate": {"base_url": "http://x/v1"}})
    assert params.build(GenerateConfig, path, {}).base_url == ["http://x/v1"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("generate: [1, 2]\n", "section 'generate' must be a mapping"),
        ("- 1\n", "expected a mapping of stage sections at the top level"),
        ("generate: {max_tokens: 4\n", "not valid YAML"),
        ("convert:\n  min_prob_mass: 0.9\nsnapshot:\n  strategy: full_memory\n", "unknown section 'snapshot'"),
        ("stats:\n  min_prob_mass: 0.9\n", "stats.min_prob_mass: unknown parameter; it is read from convert.min_prob_mass"),
    ],
)
def test_params_check_rejects_malformed_files(text: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    assert cli_main(["params", "--check", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_params_check_accepts_the_repository_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["params", "--check", str(REPO / "params.yaml")]) == 0
    assert capsys.readouterr().out.strip() == f"{REPO / 'params.yaml'}: ok (snapshots, generate, gain, convert, stats, push)"


def test_regex_flags_keep_their_commas() -> None:
    args = parse("snapshots", "--redact-patterns", r"[a-z]{2,}@x\.org", r"sk-\w{16,}")
    assert params.flag_values(args, SnapshotsConfig) == {"redact_patterns": [r"[a-z]{2,}@x\.org", r"sk-\w{16,}"]}


def test_a_wrong_list_item_shows_the_whole_list(tmp_path: Path) -> None:
    path = write_params(tmp_path, {"stats": {"mass_thresholds": [0.5, "x"]}})
    with pytest.raises(UserError, match=r'stats\.mass_thresholds: expected a list of numbers, got \[0\.5, "x"\]$'):
        params.build(StatsConfig, path, {})



def test_values_from_python_get_the_same_user_error() -> None:
    with pytest.raises(UserError, match=r"^snapshots\.window_k: expected an integer >= 1, got 0$"):
        params.validate(SnapshotsConfig, {"window_k": 0})
    with pytest.raises(UserError, match=r"^generate\.base_url: the openai backend needs at least one server URL"):
        params.validate(GenerateConfig, {"backend": "openai"})
