"""Small generated inputs for the reliability suite (valid snapshots and intermediate datasets)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path


def write_snapshot(folder: Path, samples: int, seed: int = 0) -> Path:
    """An episode folder with one snapshot of `samples` Observation/Action/Feedback triples."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(samples):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        lines.append({"type": "Observation", "content": f"Problem {i}: what is {a} + {b}? Zoë asks."})
        answer = a + b if rng.random() < 0.7 else a + b + 1
        lines.append({"type": "Action", "content": f"Answer: {answer}"})
        lines.append({"type": "Feedback", "content": {"correct": answer == a + b, "message": "ok" if answer == a + b else "wrong"}})
    path = folder / "memory_000001.jsonl"
    path.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    return path


def write_dataset(path: Path, rows: int, tokens: int, k: int = 20, seed: int = 0) -> Path:
    """An intermediate dataset with exact ids, as the embedded teacher writes it."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as handle:
        for row in range(rows):
            content = []
            ids = []
            for _ in range(tokens):
                raw = sorted((rng.expovariate(1.0) * rng.choice([1, 6]) for _ in range(k)), reverse=True)
                norm = math.log(sum(math.exp(v) for v in raw))
                alternatives = rng.sample(range(100, 49000), k)
                top = [{"token": f"t{tid}", "logprob": v - norm, "token_id": tid} for tid, v in zip(alternatives, raw)]
                content.append({"token": top[0]["token"], "logprob": top[0]["logprob"], "token_id": alternatives[0], "top_logprobs": top})
                ids.append(alternatives[0])
            record = {
                "messages": [
                    {"role": "system", "content": "You are a math tutor agent.", "token_ids": None, "logprobs": None},
                    {"role": "user", "content": f"Problem {row}: what is 2 + {row}?", "token_ids": None, "logprobs": None},
                    {"role": "assistant", "content": "".join(t["token"] for t in content), "token_ids": ids, "logprobs": {"content": content}},
                ],
                "system_prompt": "You are a math tutor agent.",
                "metadata": {"sample_idx": row, "teacher": {"backend": "local", "model": "smollm2-135m-instruct"},
                             "finish_reason": "length", "failed": row % 3 == 0, "memory_size_chars": 100 * row,
                             "memory_size_entries": row, "metrics": {"duration": 0.1, "input_tokens": 50, "output_tokens": tokens}},
                "type": "memory_distillation",
            }
            handle.write(json.dumps(record) + "\n")
    return path
