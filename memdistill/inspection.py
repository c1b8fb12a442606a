"""`memdistill inspect`: one record of a JSONL or parquet dataset, token by token."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from memdistill.errors import UserError


def read_record(path: Path, sample: int) -> dict[str, Any]:
    """Record number `sample` (0-based) without loading the whole file."""
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    if path.suffix == ".parquet":
        parquet = pq.ParquetFile(path)
        seen = 0
        for group in range(parquet.num_row_groups):
            rows = parquet.metadata.row_group(group).num_rows
            if sample < seen + rows:
                return parquet.read_row_group(group).slice(sample - seen, 1).to_pylist()[0]
            seen += rows
        raise UserError(f"{path}: --sample {sample} is out of range (the file has {seen} records)")
    with open(path, encoding="utf-8") as handle:
        number = -1
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            number += 1
            if number == sample:
                try:
                    return json.loads(line)
                except json.JSONDecodeError as exc:
                    raise UserError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
    raise UserError(f"{path}: --sample {sample} is out of range (the file has {number + 1} records)")


def token_table(message: dict[str, Any]) -> list[tuple[int, str, float, str]]:
    """(position, chosen token, probability, alternatives) per assistant token, from either format."""
    rows = []
    logprobs = message.get("logprobs")
    if isinstance(logprobs, dict) and logprobs.get("content"):
        for t, item in enumerate(logprobs["content"]):
            alternatives = ", ".join(
                f"{alt.get('token')!r}={math.exp(alt['logprob']):.3f}" for alt in item.get("top_logprobs") or []
            )
            rows.append((t, repr(item.get("token")), math.exp(item.get("logprob", -math.inf)), alternatives))
        return rows
    top = message.get("top_logprobs")
    if top:
        ids = message.get("token_ids") or []
        by_row: dict[int, list[str]] = {}
        chosen_prob: dict[int, float] = {}
        for row, token_id, logprob in zip(top["token_idx"], top["token_id"], top["logprobs"]):
            by_row.setdefault(row, []).append(f"{token_id}={math.exp(logprob):.3f}")
            if row < len(ids) and token_id == ids[row]:
                chosen_prob[row] = math.exp(logprob)
        for t, token_id in enumerate(ids):
            rows.append((t, str(token_id), chosen_prob.get(t, float("nan")), ", ".join(by_row.get(t, []))))
    return rows


def render_record(record: dict[str, Any], max_chars: int = 2000) -> str:
    lines = []
    for message in record.get("messages") or []:
        content = message.get("content") or ""
        shown = content if len(content) <= max_chars else content[:max_chars] + f"… [{len(content) - max_chars} more chars]"
        lines.append(f"── {message.get('role')} ──")
        lines.append(shown)
        if message.get("role") == "assistant":
            table = token_table(message)
            if table:
                width = max(len(chosen) for _, chosen, _, _ in table)
                lines.append(f"{'pos':>4}  {'token':<{width}}  {'prob':>6}  kept alternatives")
                for t, chosen, prob, alternatives in table:
                    lines.append(f"{t:>4}  {chosen:<{width}}  {prob:6.3f}  {alternatives}")
    return "\n".join(lines)
