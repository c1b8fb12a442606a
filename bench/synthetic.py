"""Synthetic intermediate JSONL for benchmarks: real SmolLM2 vocabulary, decoded-string tokens.

Tokens look the way a plain OpenAI-compatible server sends them: the decoded text of each token plus its
UTF-8 `bytes`, no `token_id` fields and no assistant `token_ids`, top-K alternatives per token. Rows mix
peaked distributions (the teacher is sure; a few entries reach the mass) and flat ones (top-K never
reaches it, so convert must keep all K). Every assistant message ends with `<|im_end|>` and
`finish_reason: "stop"`, as a teacher that finished normally reports it.

    python -m bench.synthetic --entries 1000000 --output /tmp/synthetic.jsonl
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from memdistill.convert.token_ids import byte_to_unicode
from memdistill.core import fileio
from memdistill.core.models import EMBEDDED_MODEL, load_tokenizer

log = logging.getLogger(__name__)

END_OF_TURN = "<|im_end|>"


@dataclass(frozen=True)
class SyntheticSpec:
    entries: int = 1_000_000  # top-k entries in total (tokens x top_k)
    top_k: int = 20
    mean_tokens: int = 100  # assistant tokens per row, on average
    flat_share: float = 0.3  # share of tokens whose top-K mass stays below any usual min_prob_mass
    off_topk_share: float = 0.01  # share of chosen tokens sampled outside their own top-K
    with_bytes: bool = True
    seed: int = 0


@dataclass(frozen=True)
class Vocabulary:
    """Decoded text and raw bytes of every ordinary (non-special) token id."""

    ids: np.ndarray  # int64 ids that may be sampled
    text: list[str]  # indexed by id
    raw: list[list[int]]  # indexed by id
    end_of_turn: int


def load_vocabulary(model: str = EMBEDDED_MODEL) -> Vocabulary:
    tokenizer = load_tokenizer(model)
    vocab = tokenizer.get_vocab()
    size = max(vocab.values()) + 1
    unicode_to_byte = {char: byte for byte, char in byte_to_unicode().items()}
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    text = [""] * size
    raw: list[list[int]] = [[] for _ in range(size)]
    usable = []
    for piece, token_id in vocab.items():
        if token_id in special or not all(char in unicode_to_byte for char in piece):
            text[token_id] = piece
            raw[token_id] = list(piece.encode("utf-8"))
            continue
        data = bytes(unicode_to_byte[char] for char in piece)
        # What a server returns as the token's text: the bytes decoded, fragments of UTF-8 as U+FFFD.
        text[token_id] = data.decode("utf-8", errors="replace")
        raw[token_id] = list(data)
        # Fragments of a character have no exact id without bytes (convert rejects such samples): the
        # benchmark draws whole-character tokens, so both modes convert every sample.
        if "\ufffd" not in text[token_id]:
            usable.append(token_id)
    return Vocabulary(np.asarray(sorted(usable), dtype=np.int64), text, raw, int(tokenizer.convert_tokens_to_ids(END_OF_TURN)))


def _distributions(rng: np.random.Generator, rows: int, spec: SyntheticSpec) -> np.ndarray:
    """Sorted-descending top-K probabilities per row; their sum is < 1 (the tail beyond K holds the rest)."""
    flat = rng.random(rows) < spec.flat_share
    # Flat: mass spread over ~200 candidates, so the top K hold well under 0.9 together.
    spread = rng.dirichlet(np.ones(200), size=rows)[:, : spec.top_k]
    spread = -np.sort(-spread, axis=1)
    # Peaked: one dominant token, a geometric tail.
    top1 = 1.0 - rng.beta(1.0, 30.0, size=rows)
    ratio = rng.uniform(0.2, 0.6, size=rows)[:, None]
    tail = (1.0 - top1)[:, None] * (1 - ratio) * ratio ** np.arange(spec.top_k - 1)[None, :]
    peaked = np.concatenate([top1[:, None], tail], axis=1)
    return np.where(flat[:, None], spread, peaked)


def _entry(vocab: Vocabulary, token_id: int, logprob: float, with_bytes: bool) -> dict:
    entry = {"token": vocab.text[token_id], "logprob": logprob}
    if with_bytes:
        entry["bytes"] = vocab.raw[token_id]
    return entry


def synthetic_row(rng: np.random.Generator, vocab: Vocabulary, spec: SyntheticSpec, index: int, tokens: int) -> dict:
    probs = _distributions(rng, tokens, spec)
    logprobs = np.log(probs)
    # K distinct ids per row, the last row's first alternative is the end-of-turn token.
    ids = vocab.ids[rng.integers(0, vocab.ids.size, size=(tokens, spec.top_k * 2))]
    top_ids = np.empty((tokens, spec.top_k), dtype=np.int64)
    for t in range(tokens):
        top_ids[t] = np.unique(ids[t])[: spec.top_k] if np.unique(ids[t]).size >= spec.top_k else vocab.ids[: spec.top_k]
        rng.shuffle(top_ids[t])
    top_ids[-1, 0] = vocab.end_of_turn
    picked = np.where(rng.random(tokens) < 0.8, 0, rng.integers(0, spec.top_k, size=tokens))
    picked[-1] = 0
    chosen = top_ids[np.arange(tokens), picked]
    chosen_lp = logprobs[np.arange(tokens), picked]
    off = rng.random(tokens) < spec.off_topk_share
    off[-1] = False
    chosen = np.where(off, vocab.ids[rng.integers(0, vocab.ids.size, size=tokens)], chosen)
    chosen_lp = np.where(off, np.log(rng.uniform(1e-6, 1e-4, size=tokens)), chosen_lp)
    content = []
    lp_rows = logprobs.tolist()
    id_rows = top_ids.tolist()
    for t in range(tokens):
        item = _entry(vocab, int(chosen[t]), float(chosen_lp[t]), spec.with_bytes)
        item["top_logprobs"] = [_entry(vocab, i, lp, spec.with_bytes) for i, lp in zip(id_rows[t], lp_rows[t])]
        content.append(item)
    text = "".join(vocab.text[int(i)] for i in chosen[:-1])
    system = "You are a math tutor agent. Solve grade-school word problems step by step and end with 'Answer: <number>'."
    user = f"Here is the current observation:\nProblem {index}: a farmer has {index % 97} sheep and buys {index % 13} more. How many?"
    return {
        "messages": [
            {"role": "system", "content": system, "token_ids": None, "logprobs": None},
            {"role": "user", "content": user, "token_ids": None, "logprobs": None},
            {"role": "assistant", "content": text, "token_ids": None, "logprobs": {"content": content}},
        ],
        "system_prompt": system,
        "metadata": {
            "sample_idx": index,
            "teacher": {"backend": "openai", "model": EMBEDDED_MODEL, "temperature": 1.0, "top_logprobs": spec.top_k},
            "finish_reason": "stop",
            "strategy": "synthetic",
        },
        "type": "memory_distillation",
    }


def write_synthetic(path: Path, spec: SyntheticSpec, vocab: Vocabulary | None = None) -> int:
    """Write rows until `spec.entries` top-k entries are reached; returns the number of rows."""
    vocab = vocab or load_vocabulary()
    rng = np.random.default_rng(spec.seed)
    target_tokens = max(1, spec.entries // spec.top_k)
    written_tokens = rows = 0
    with fileio.atomic_output(path, "wb") as handle:
        while written_tokens < target_tokens:
            tokens = int(min(target_tokens - written_tokens, max(2, rng.integers(spec.mean_tokens // 5, spec.mean_tokens * 2))))
            tokens = max(tokens, 2) if target_tokens - written_tokens >= 2 else tokens
            handle.write(orjson.dumps(synthetic_row(rng, vocab, spec, rows, tokens)) + b"\n")
            written_tokens += tokens
            rows += 1
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=SyntheticSpec.entries, help="top-k entries in total (default 1,000,000)")
    parser.add_argument("--top-k", type=int, default=SyntheticSpec.top_k)
    parser.add_argument("--mean-tokens", type=int, default=SyntheticSpec.mean_tokens, help="assistant tokens per row on average")
    parser.add_argument("--no-bytes", action="store_true", help="omit the `bytes` fields (token strings only)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    spec = SyntheticSpec(entries=args.entries, top_k=args.top_k, mean_tokens=args.mean_tokens, with_bytes=not args.no_bytes, seed=args.seed)
    rows = write_synthetic(args.output, spec)
    print(f"{args.output}: {rows} rows, {spec.entries // spec.top_k} assistant tokens x top-{spec.top_k}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
