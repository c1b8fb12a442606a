"""Parameters: a section of params.yaml, overridden by whatever flags the user passed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from memdistill.errors import UserError


def load_section(params_path: str | Path | None, section: str) -> dict[str, Any]:
    """Return `section` of a params file, or {} when no file was given."""
    if params_path is None:
        return {}
    path = Path(params_path)
    if not path.is_file():
        raise UserError(f"{path}: params file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of stage sections at the top level")
    value = data.get(section, {})
    if not isinstance(value, dict):
        raise UserError(f"{path}: section '{section}' must be a mapping")
    return value


def merge(defaults: dict[str, Any], from_file: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
    """defaults < params file < flags that were given (None means 'not given')."""
    merged = dict(defaults)
    merged.update(from_file)
    merged.update({key: value for key, value in flags.items() if value is not None})
    return merged


def build_config(cls: type, values: dict[str, Any], source: str) -> Any:
    """Instantiate a config dataclass from merged values, naming the source of any unknown key."""
    import dataclasses

    known = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(f"{source}: unknown parameter(s) {', '.join(unknown)}; expected some of {', '.join(sorted(known))}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{source}: {exc}") from None
