"""A feedback's verdict and the rule that decided it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a feedback says: failed (True), passed (False) or nothing readable (None), and the rule that decided."""

    failed: bool | None
    rule: str

    def to_dict(self) -> dict[str, Any]:
        return {"failed": self.failed, "rule": self.rule}
