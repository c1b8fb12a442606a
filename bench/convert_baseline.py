"""A straightforward converter (per-token look-ups, dense arrays, from_pylist), kept as the benchmark's reference point.

Per row: `json.loads`; per token and per top-k entry a tokenizer look-up; a dense [T, K] array per
message, sorted and cut by mass; every row built as Python lists and dicts and written at the end with
`pyarrow.Table.from_pylist` (snappy). It resolves ids in the same order as memdistill (token_id:N,
bytes, the string's UTF-8 bytes, vocabulary entry, one-id encoding) and keeps all K when the mass is never
reached, so on whole-character tokens its kept ids must equal memdistill's; it is slow and holds the whole
dataset in memory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from memdistill.convert.token_ids import byte_to_unicode


class BaselineConverter:
    def __init__(self, tokenizer: Any, min_prob_mass: float) -> None:
        self.tokenizer = tokenizer
        self.min_prob_mass = min_prob_mass
        self.table = byte_to_unicode()

    def lookup(self, piece: str) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(piece)
        if token_id is None or (token_id == self.tokenizer.unk_token_id and piece != self.tokenizer.unk_token):
            return -1
        return int(token_id)

    def token_id(self, entry: dict[str, Any]) -> int:
        if isinstance(entry.get("token_id"), int):
            return entry["token_id"]
        token = entry.get("token")
        if token.startswith("token_id:"):
            return int(token[len("token_id:"):])
        if entry.get("bytes"):
            found = self.lookup("".join(self.table[b] for b in entry["bytes"]))
            if found >= 0:
                return found
        found = self.lookup("".join(self.table[b] for b in token.encode("utf-8")))
        if found >= 0:
            return found
        found = self.lookup(token)
        if found >= 0:
            return found
        encoded = self.tokenizer.encode(token, add_special_tokens=False)
        return encoded[0] if len(encoded) == 1 else -1

    def assistant(self, message: dict[str, Any]) -> dict[str, Any]:
        items = message["logprobs"]["content"]
        T = len(items)
        K = max(len(item["top_logprobs"]) for item in items)
        logprobs = np.full((T, K), -np.inf)
        ids = np.full((T, K), -1, dtype=np.int64)
        chosen = []
        for t, item in enumerate(items):
            chosen.append(self.token_id(item))
            for k, alt in enumerate(item["top_logprobs"]):
                logprobs[t, k] = alt["logprob"]
                ids[t, k] = self.token_id(alt)
        token_idx, token_id, values = [], [], []
        for t in range(T):
            order = np.argsort(-logprobs[t], kind="stable")
            mass = 0.0
            for k in order:
                if not np.isfinite(logprobs[t, k]):
                    break
                token_idx.append(t)
                token_id.append(int(ids[t, k]))
                values.append(float(np.float32(logprobs[t, k])))
                mass += float(np.exp(np.float64(np.float32(logprobs[t, k]))))
                if mass >= self.min_prob_mass:
                    break
        top = {"token_idx": token_idx, "token_id": token_id, "logprobs": values, "shape": [T, K]}
        return {"role": "assistant", "content": message["content"], "token_ids": chosen, "top_logprobs": top}

    def row(self, raw: dict[str, Any]) -> dict[str, Any]:
        messages = []
        for message in raw["messages"]:
            if message["role"] == "assistant":
                messages.append(self.assistant(message))
            else:
                ids = self.tokenizer.encode(message["content"], add_special_tokens=False)
                messages.append({"role": message["role"], "content": message["content"], "token_ids": ids, "top_logprobs": None})
        return {"messages": messages, "system_prompt": raw["system_prompt"], "metadata": json.dumps(raw["metadata"]), "type": raw["type"]}


def convert_baseline(input_path: Path, output: Path, tokenizer: Any, min_prob_mass: float) -> int:
    converter = BaselineConverter(tokenizer, min_prob_mass)
    rows = []
    with open(input_path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                rows.append(converter.row(json.loads(line)))
    pq.write_table(pa.Table.from_pylist(rows), str(output), compression="snappy")
    return len(rows)
