"""Parameters: one pydantic model per stage validates params.yaml and command-line flags alike.

Each stage declares its parameters once, as fields of a `StageParams` model (type, range, default and
a one-line description). From those fields come the `params.yaml` validation, the CLI flags with their
`--help` text, and the defaults; `memdistill params --check params.yaml` runs the same validation
without running a stage. A bad value is one line naming the file, `section.key` and what was expected:

    params.yaml: generate.max_tokens: expected an integer >= 1, got "abc"
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar, Union

import annotated_types
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.fields import FieldInfo

from memdistill.core import fileio
from memdistill.core.errors import UserError

NULL_WORDS = ("null", "none")


class StageParams(BaseModel):
    """Base of every stage's parameter model: unknown keys are errors; values are validated strictly
    (YAML `"no"` is not a boolean, `true` is not an integer, `8192.0` is not a token count)."""

    model_config = ConfigDict(extra="forbid")

    section: ClassVar[str]
    """The params.yaml section the model reads."""
    borrowed: ClassVar[dict[str, str]] = {}
    """Fields read from another stage's section (field name -> section), e.g. stats' min_prob_mass."""


Params = TypeVar("Params", bound=StageParams)


def read_params_file(path: str | Path) -> dict[str, Any]:
    """The whole params file as a mapping of sections."""
    source = Path(path)
    if not source.is_file():
        raise UserError(f"{source}: params file not found")
    try:
        data = yaml.safe_load(source.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{source}: not valid YAML ({reason})") from None
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a mapping of stage sections at the top level")
    return data


def check_with(check: Callable[[Any], Any], value: Any) -> None:
    """Run a library check inside a field validator: its UserError becomes the field's error message."""
    try:
        check(value)
    except UserError as exc:
        # The library names the field itself ("window_k: ..."); the params error line names it already.
        raise ValueError(str(exc).split(": ", 1)[-1]) from None


def local_path_field(value: str | None) -> str | None:
    """A field validator for path parameters (`field_validator(...)(local_path_field)`): a URL is refused."""
    if value is not None and (reason := fileio.url_refusal(value)):
        raise ValueError(reason)
    return value


# ---------------------------------------------------------------------------------------------- errors


def _non_null(annotation: Any) -> tuple[Any, bool]:
    """(the annotation without None, whether None is allowed)."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        nullable = len(args) < len(typing.get_args(annotation))
        return (args[0] if len(args) == 1 else Union[tuple(args)]), nullable
    return annotation, False


def _range_text(metadata: list[Any]) -> str:
    """' >= 1', ' in (0, 1]' or '' from a field's ge/gt/le/lt constraints."""
    low = high = None
    for constraint in metadata:
        if isinstance(constraint, annotated_types.Ge):
            low = ("[", ">=", constraint.ge)
        elif isinstance(constraint, annotated_types.Gt):
            low = ("(", ">", constraint.gt)
        elif isinstance(constraint, annotated_types.Le):
            high = ("]", "<=", constraint.le)
        elif isinstance(constraint, annotated_types.Lt):
            high = (")", "<", constraint.lt)
    if low and high:
        return f" in {low[0]}{low[2]}, {high[2]}{high[0]}"
    if low or high:
        _, operator, bound = low or high  # type: ignore[misc]
        return f" {operator} {bound}"
    return ""


def _type_text(annotation: Any) -> str:
    base, _ = _non_null(annotation)
    origin = typing.get_origin(base)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_text(arg) for arg in typing.get_args(base))
    if origin is Annotated:  # a union member with its own range: Annotated[int, Field(ge=1)] | Literal["auto"]
        inner, *extras = typing.get_args(base)
        constraints = [c for extra in extras for c in (extra.metadata if isinstance(extra, FieldInfo) else [extra])]
        return _type_text(inner) + _range_text(constraints)
    if origin is Literal:
        values = typing.get_args(base)
        return f"'{values[0]}'" if len(values) == 1 else "one of " + ", ".join(str(v) for v in values)
    if origin is dict:
        return "a mapping"
    if origin in (list, tuple):
        inner = typing.get_args(base)[0]
        return {str: "a list of strings", int: "a list of integers", float: "a list of numbers"}.get(inner, "a list")
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(base, str(base))


def expected_text(field: FieldInfo) -> str:
    """What a field accepts, in words: 'an integer >= 1', 'a number in [0, 1] or null', 'one of a, b'."""
    _, nullable = _non_null(field.annotation)
    text = _type_text(field.annotation) + _range_text(field.metadata)
    return text + (" or null" if nullable else "")


def _shown(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


def _where(model: type[StageParams], key: str, params_path: str | Path | None, flags: Mapping[str, Any]) -> str:
    if key in flags:
        return f"--{key.replace('_', '-')}"
    section = model.borrowed.get(key, model.section)
    return f"{params_path}: {section}.{key}" if params_path else f"{section}.{key}"


def _error_line(
    model: type[StageParams], exc: ValidationError, values: Mapping[str, Any], params_path: str | Path | None, flags: Mapping[str, Any]
) -> str:
    """The first problem of a ValidationError as one line naming where the value came from."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc = [str(part) for part in first["loc"]]
    # A value failing every member of a union (int | 'auto') is one problem, not one per member.
    problems = len({error["loc"][:1] for error in errors})
    more = f" (and {problems - 1} more)" if problems > 1 else ""
    if not loc:  # a check across fields: its message starts with the key it is about
        message = first["msg"].removeprefix("Value error, ")
        where = f"{params_path}: {model.section}." if params_path else f"{model.section}."
        return f"{where}{message}{more}"
    key = loc[0]
    where = _where(model, key, params_path, flags)
    if first["type"] == "extra_forbidden":
        known = ", ".join(name for name in model.model_fields if name not in model.borrowed)
        return f"{where}: unknown parameter; expected some of {known}{more}"
    if first["type"] == "value_error":
        return f"{where}: {first['msg'].removeprefix('Value error, ')}{more}"
    field = model.model_fields[key]
    given = values.get(key, first.get("input"))  # the whole value, also when one list item is wrong
    return f"{where}: expected {expected_text(field)}, got {_shown(given)}{more}"


def validate(model: type[Params], values: Mapping[str, Any], params_path: str | Path | None = None, flags: Mapping[str, Any] = {}) -> Params:
    """Validate merged values strictly; a problem is a UserError naming the file or flag and the key."""
    try:
        return model.model_validate(dict(values), strict=True)
    except ValidationError as exc:
        raise UserError(_error_line(model, exc, values, params_path, flags)) from None


def build(model: type[Params], params_path: str | Path | None, flags: Mapping[str, Any]) -> Params:
    """defaults < params file section < flags that were given."""
    values: dict[str, Any] = {}
    if params_path is not None:
        sections = read_params_file(params_path)
        own = sections.get(model.section) or {}
        if not isinstance(own, dict):
            raise UserError(f"{params_path}: section '{model.section}' must be a mapping")
        for key, section in model.borrowed.items():
            if key in own:
                raise UserError(f"{params_path}: {model.section}.{key}: unknown parameter; it is read from {section}.{key}")
            other = sections.get(section)
            if isinstance(other, dict) and key in other:
                values[key] = other[key]
        values.update(own)
    values.update(flags)
    return validate(model, values, params_path, flags)


def check_file(params_path: str | Path, models: list[type[StageParams]]) -> list[str]:
    """Validate every stage section of a params file; returns the sections checked."""
    sections = read_params_file(params_path)
    known = {model.section for model in models}
    unknown = sorted(str(name) for name in sections if name not in known)
    if unknown:
        raise UserError(f"{params_path}: unknown section '{unknown[0]}'; expected some of {', '.join(sorted(known))}")
    for model in models:
        build(model, params_path, {})
    return [model.section for model in models]


# ------------------------------------------------------------------------------------------------ flags


def _parse_union(members: tuple[Any, ...]) -> Callable[[str], Any]:
    """int | Literal["auto"]: a word of the literal as itself, anything else as the number type."""
    words = {str(v): v for m in members if typing.get_origin(m) is Literal for v in typing.get_args(m)}
    numbers = [typing.get_args(m)[0] if typing.get_origin(m) is Annotated else m for m in members]
    numbers = [m for m in numbers if m in (int, float)]

    def convert(text: str) -> Any:
        if text in words:
            return words[text]
        if numbers:
            return numbers[0](text)
        raise ValueError(text)

    return convert


def _parse_mapping(text: str) -> dict[str, Any]:
    """A mapping flag in YAML flow style, as params.yaml writes it: '{run: exp-12, split: train}'."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        raise ValueError(text) from None
    if not isinstance(value, dict):
        raise ValueError(text)
    return value


def _scalar_parser(annotation: Any) -> Callable[[str], Any]:
    base, nullable = _non_null(annotation)
    convert: Callable[[str], Any] = base if base in (int, float) else str
    if typing.get_origin(base) in (Union, types.UnionType):
        convert = _parse_union(typing.get_args(base))
    elif typing.get_origin(base) is dict:
        convert = _parse_mapping

    def parse(text: str) -> Any:
        if nullable and text.strip().lower() in NULL_WORDS:
            return None
        try:
            return convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {_type_text(annotation)}, got {text!r}") from None

    parse.__name__ = getattr(base, "__name__", "value")
    return parse


def _split_list(parse: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    """A list of numbers takes several values or one comma-separated value (0.5,0.9,0.99); strings such
    as regexes may hold commas themselves, so they are never split."""

    def parse_all(text: str) -> list[Any]:
        return [parse(part.strip()) for part in text.split(",") if part.strip()]

    return parse_all


def add_argument(parser: argparse.ArgumentParser | argparse._ActionsContainer, model: type[StageParams], name: str) -> None:
    """The flag of one field (--field-name): help text and default from the field; an absent flag stays unset."""
    field = model.model_fields[name]
    flag = f"--{name.replace('_', '-')}"
    default = field.get_default(call_default_factory=True)
    help_text = f"{field.description or name} [{expected_text(field)}; default {_shown(default)}]".replace("%", "%%")
    base, _ = _non_null(field.annotation)
    options: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": help_text}
    if base is bool:
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, **options)
    elif typing.get_origin(base) in (list, tuple):
        item = typing.get_args(base)[0]
        parse = _split_list(_scalar_parser(item)) if item in (int, float) else _scalar_parser(item)
        parser.add_argument(flag, nargs="*", type=parse, metavar=name.upper(), **options)
    elif typing.get_origin(base) is Literal:
        choices = [str(v) for v in typing.get_args(base)]
        parser.add_argument(flag, choices=choices, **options)
    else:
        parser.add_argument(flag, type=_scalar_parser(field.annotation), metavar=name.upper(), **options)


def add_arguments(parser: argparse.ArgumentParser, model: type[StageParams], skip: tuple[str, ...] = ()) -> None:
    """One flag per field except those in `skip` (a stage adds those itself, e.g. in a mutually exclusive group)."""
    for name in model.model_fields:
        if name not in skip:
            add_argument(parser, model, name)


def flag_values(args: argparse.Namespace, model: type[StageParams]) -> dict[str, Any]:
    """The fields the user gave as flags (list flags flattened from their comma-separated parts)."""
    given: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        if not hasattr(args, name):
            continue
        value = getattr(args, name)
        base, _ = _non_null(field.annotation)
        if typing.get_origin(base) in (list, tuple) and isinstance(value, list):
            value = [item for part in value for item in (part if isinstance(part, list) else [part])]
            if typing.get_origin(base) is tuple:
                value = tuple(value)
        given[name] = value
    return given
