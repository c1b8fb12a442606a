"""What convert decides about each sample, and counts: the summary in the parquet footer, the rejections
(with the reason the rejects file gives), the logprob contract a record declares."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from memdistill.core.errors import UserError


@dataclass
class ConvertSummary:
    """What convert did, counted; logged, and stored in the parquet footer under `memdistill.convert`."""

    rows: int = 0
    assistant_messages: int = 0
    assistant_tokens: int = 0
    topk_entries: int = 0
    kept_entries: int = 0
    unmapped_ids: int = 0
    chosen_not_in_topk: int = 0
    rows_without_alternatives: int = 0
    missing_logprobs: int = 0
    checked_ids: int = 0  # chosen and alternative ids looked at, rejected samples included
    dropped_alternatives: int = 0
    rejected: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    left_out_low_gain: int = 0  # below convert.min_memory_gain (not rejected: nothing is wrong with them)
    eot_appended: int = 0
    tokenizer: str = ""
    recorded_model: str | None = None
    min_prob_mass: float = 0.0

    @property
    def unmapped_rate(self) -> float:
        return self.unmapped_ids / self.checked_ids if self.checked_ids else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["unmapped_rate"] = round(self.unmapped_rate, 6)
        return out


class SampleRejected(Exception):
    """A sample cartridges could not train on correctly; it goes to the rejects file with this reason."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


class Unconvertible(Exception):
    """The block holds something the engine does not take exactly; the record-by-record check takes over."""


def no_logprobs(field_name: str, strict: bool) -> SampleRejected:
    """An assistant message with no per-token record: cartridges would crash or train on nothing."""
    if strict:
        raise UserError(f"{field_name}: assistant message has no logprobs (strict: every assistant message needs them)")
    return SampleRejected("no_logprobs", f"{field_name}: assistant message has no logprobs")


def not_recovered(field_name: str, first: int, missing: int, tokens: int) -> SampleRejected:
    return SampleRejected("chosen_not_recovered",
                          f"{field_name}.logprobs.content[{first}]: the chosen token's id cannot be recovered exactly ({missing} of {tokens} tokens)")


def not_decoding(field_name: str, decoded: str, content: str) -> SampleRejected:
    return SampleRejected("ids_do_not_decode_to_content",
                          f"{field_name}: the recovered ids decode to {short(decoded)!r}, not to the content {short(content)!r}")


def strict_error(rejected: SampleRejected) -> UserError:
    return UserError(f"{rejected.reason} (strict: failing instead of rejecting the sample)")


def logprobs_mode(metadata: dict[str, Any]) -> str | None:
    """The logprob contract a record says it was generated under (metadata.teacher.logprobs), if any."""
    teacher = metadata.get("teacher")
    mode = teacher.get("logprobs") if isinstance(teacher, dict) else None
    return mode if isinstance(mode, str) else None


def short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
