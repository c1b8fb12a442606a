"""The convert stage's engine: intermediate JSONL -> cartridges parquet with mass-sparsified logprobs."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from memdistill import fileio
from memdistill.cartridges_io import CartridgesWriter, OutMessage, OutRow, OutTop
from memdistill.errors import UserError
from memdistill.logprobs import MISSING_ID, flatten_by_mass
from memdistill.models import load_tokenizer
from memdistill.token_ids import TokenIdResolver

log = logging.getLogger(__name__)

# Tolerance for logprobs that are a rounding error above zero (servers print -0.0 or 1e-7).
POSITIVE_LOGPROB_TOLERANCE = 1e-4


@dataclass
class ConvertSummary:
    rows: int = 0
    assistant_tokens: int = 0
    kept_entries: int = 0
    topk_entries: int = 0
    unmapped_ids: int = 0
    chosen_not_in_topk: int = 0
    missing_logprobs: int = 0
    tokenizer: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def unmapped_rate(self) -> float:
        total = self.assistant_tokens + self.topk_entries
        return self.unmapped_ids / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "assistant_tokens": self.assistant_tokens,
            "topk_entries": self.topk_entries,
            "kept_entries": self.kept_entries,
            "unmapped_ids": self.unmapped_ids,
            "unmapped_rate": round(self.unmapped_rate, 6),
            "chosen_not_in_topk": self.chosen_not_in_topk,
            "missing_logprobs": self.missing_logprobs,
            "tokenizer": self.tokenizer,
        }


def recorded_teacher_model(path: Path) -> str | None:
    """The teacher model named in the first row's metadata, if the file records one."""
    for _, row in fileio.read_jsonl(path):
        teacher = (row.get("metadata") or {}).get("teacher") if isinstance(row, dict) else None
        return teacher.get("model") if isinstance(teacher, dict) else None
    return None


class RowConverter:
    def __init__(self, tokenizer: Any, min_prob_mass: float, strict: bool, summary: ConvertSummary) -> None:
        self.tokenizer = tokenizer
        self.resolver = TokenIdResolver(tokenizer)
        self.min_prob_mass = min_prob_mass
        self.strict = strict
        self.summary = summary

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.tokenizer.encode(text, add_special_tokens=False), dtype=np.int64)

    def _id(self, item: dict[str, Any]) -> int:
        token_id = item.get("token_id")
        if isinstance(token_id, int) and not isinstance(token_id, bool):
            return token_id
        return self.resolver.resolve(item.get("token"), item.get("bytes"))

    def assistant(self, message: dict[str, Any], where: str) -> OutMessage:
        content = message.get("content") or ""
        logprobs = message.get("logprobs")
        items = logprobs.get("content") if isinstance(logprobs, dict) else logprobs if isinstance(logprobs, list) else None
        if not items:
            self.summary.missing_logprobs += 1
            if self.strict:
                raise UserError(f"{where}: assistant message has no logprobs (--strict)")
            given = message.get("token_ids")
            ids = np.asarray(given, dtype=np.int64) if isinstance(given, list) else self.encode(content)
            return OutMessage("assistant", content, ids, None)
        T = len(items)
        K = max((len(item.get("top_logprobs") or []) for item in items), default=0)
        dense_lp = np.full((T, max(K, 1)), -np.inf, dtype=np.float64)
        dense_ids = np.full((T, max(K, 1)), MISSING_ID, dtype=np.int64)
        chosen = np.empty(T, dtype=np.int64)
        chosen_lp = np.empty(T, dtype=np.float64)
        for t, item in enumerate(items):
            if not isinstance(item, dict):
                raise UserError(f"{where}: logprobs.content[{t}] must be an object")
            chosen[t] = self._id(item)
            chosen_lp[t] = _logprob(item.get("logprob"), f"{where}: logprobs.content[{t}].logprob")
            tops = item.get("top_logprobs") or []
            if not tops:
                # No alternatives recorded: the chosen token is the only known entry of its row.
                dense_lp[t, 0], dense_ids[t, 0] = chosen_lp[t], chosen[t]
                continue
            for k, alt in enumerate(tops):
                dense_lp[t, k] = _logprob(alt.get("logprob"), f"{where}: logprobs.content[{t}].top_logprobs[{k}].logprob")
                dense_ids[t, k] = self._id(alt)
        exact = message.get("token_ids")
        if isinstance(exact, list) and len(exact) == T and all(isinstance(x, int) for x in exact):
            chosen = np.asarray(exact, dtype=np.int64)
        K = dense_lp.shape[1]
        flat = flatten_by_mass(dense_lp, dense_ids, self.min_prob_mass)
        valid = np.isfinite(dense_lp)
        self.summary.assistant_tokens += T
        self.summary.topk_entries += int(valid.sum())
        self.summary.kept_entries += int(flat.token_id.size)
        self.summary.unmapped_ids += int((chosen == MISSING_ID).sum()) + int(((dense_ids == MISSING_ID) & valid).sum())
        in_top = ((dense_ids == chosen[:, None]) & valid).any(axis=1)
        self.summary.chosen_not_in_topk += int((~in_top).sum())
        top = OutTop(flat.token_idx, flat.token_id, flat.logprobs, (T, K))
        return OutMessage("assistant", content, chosen, top)

    def row(self, raw: Any, where: str) -> OutRow:
        if not isinstance(raw, dict):
            raise UserError(f"{where}: expected an object with 'messages'")
        messages = raw.get("messages")
        if not isinstance(messages, list) or not messages:
            raise UserError(f"{where}: 'messages' must be a non-empty list")
        out = []
        for number, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise UserError(f"{where}: messages[{number}] must be an object with a 'role'")
            content = message.get("content")
            if content is not None and not isinstance(content, str):
                raise UserError(f"{where}: messages[{number}].content must be a string")
            if message["role"] == "assistant":
                out.append(self.assistant(message, f"{where}: messages[{number}]"))
            else:
                out.append(OutMessage(message["role"], content or "", self.encode(content or ""), None))
        metadata = raw.get("metadata", {})
        system_prompt = raw.get("system_prompt")
        if system_prompt is None:
            system_prompt = next((m.get("content") or "" for m in messages if m.get("role") == "system"), "")
        return OutRow(out, str(system_prompt), json.dumps(metadata, ensure_ascii=False), str(raw.get("type") or ""))


def _logprob(value: Any, where: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise UserError(f"{where}: expected a number, got {value!r}")
    number = float(value)
    if math.isnan(number):
        raise UserError(f"{where}: logprob is NaN")
    if number > POSITIVE_LOGPROB_TOLERANCE:
        raise UserError(f"{where}: logprob {number} is positive (a log-probability must be <= 0)")
    return min(number, 0.0)


def iter_rows(path: Path) -> Iterator[tuple[int, Any]]:
    return fileio.read_jsonl(path)


def convert_file(
    input_path: Path,
    output: Path,
    model: str | None,
    min_prob_mass: float,
    strict: bool = False,
    max_unmapped_rate: float = 0.01,
    rows_per_group: int = 256,
) -> ConvertSummary:
    if not 0.0 < min_prob_mass <= 1.0:
        raise UserError(f"min_prob_mass: must be in (0, 1], got {min_prob_mass}")
    if not input_path.is_file():
        raise UserError(f"{input_path}: file not found")
    fileio.ensure_parent(output)
    recorded = recorded_teacher_model(input_path)
    tokenizer_name = model or recorded
    if not tokenizer_name:
        raise UserError(f"{input_path}: the dataset records no teacher model; pass --model (a hub id, a local folder, or smollm2-135m-instruct)")
    summary = ConvertSummary(tokenizer=tokenizer_name)
    converter = RowConverter(load_tokenizer(tokenizer_name), min_prob_mass, strict, summary)
    with fileio.atomic_path(output) as tmp:
        writer = CartridgesWriter(tmp, rows_per_group=rows_per_group)
        try:
            for lineno, raw in tqdm(iter_rows(input_path), desc="convert", unit="row", dynamic_ncols=True):
                writer.write(converter.row(raw, f"{input_path}:{lineno}"))
                summary.rows += 1
        finally:
            writer.close()
        if summary.rows == 0:
            raise UserError(f"{input_path}: no rows to convert (the file is empty)")
        if summary.unmapped_rate > max_unmapped_rate:
            raise UserError(
                f"{input_path}: {summary.unmapped_ids} token ids ({summary.unmapped_rate:.1%}) could not be mapped: "
                f"dataset generated by {recorded or 'an unrecorded model'}, converting with {tokenizer_name}; "
                f"pass --model with the teacher's tokenizer"
            )
    return summary
