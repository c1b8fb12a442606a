"""Recorded conversions: deterministic inputs (random records, the fixtures of test_convert, synthetic files)
and what convert made of each, kept in tests/data/convert_golden.json.

The file was written by the converter as it stood before the columnar engine became the only one
(2026-12-07), where its two readers, per row and columnar, agreed on every case but those whose metadata
holds an integer past 64 bits: the exact integer is recorded there (the per-row reader turned it into a
float unless the line held a NaN; the engine keeps it whole whichever way it reads the line).
test_convert_golden.py checks that convert still writes exactly that, case by case. A
digest covers every value of the written rows (read back), the parquet footer's counters, the rejects file
and convert's figures; an error is kept as its message. Values, not file bytes, so a new pyarrow does not change them.

    python -m tests.convert_cases --write   # only to record a deliberate change of convert's output
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from memdistill.core.errors import UserError

GOLDEN = Path(__file__).parent / "data" / "convert_golden.json"
MODEL = "smollm2-135m-instruct"
RANDOM_CASES = 400

_TOKENS = ["4", " the", "Ġa", "é", "metadata", "token_id:17", "<|im_end|>", "zzqx", " a", "x", "\n", "Ġthe"]
_ALPHABET = "ab 4é☃\n\"{}:"


def _text(rng: random.Random, size: int) -> str:
    return "".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, size)))


def _logprob(rng: random.Random, dirty: bool) -> Any:
    roll = rng.random()
    if dirty and roll < 0.03:
        return rng.choice([0.5, math.nan, None, "x"])
    if roll < 0.08:
        return -math.inf
    if roll < 0.12:
        return 0
    return -rng.random() * 8


def _entry(rng: random.Random, dirty: bool, token: Any = None) -> dict[str, Any]:
    roll = rng.random()
    if token is None:
        token = rng.choice(_TOKENS) if roll < 0.75 else _text(rng, 3) if roll < 0.93 else None
    if dirty and rng.random() < 0.02:
        token = 7
    out: dict[str, Any] = {"token": token, "logprob": _logprob(rng, dirty)}
    if dirty and rng.random() < 0.15:
        out["token_id"] = rng.choice([4, 17, 2, 256, 1000, 30000]) if rng.random() < 0.8 else rng.choice([-3, 60000, None, 5.0])
    if rng.random() < 0.12:
        out["bytes"] = [rng.randint(0, 255 if not dirty else 300) for _ in range(rng.randint(0, 3))] if rng.random() < 0.9 else None
    return out


def _assistant(rng: random.Random, dirty: bool) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": _text(rng, 5) if rng.random() < 0.9 else None}
    if rng.random() < 0.25:
        message["token_ids"] = None if rng.random() < 0.3 else [rng.choice([4, 2, 17] + ([60000] if dirty else [])) for _ in range(rng.randint(0, 4))]
    if rng.random() < 0.9:
        items = []
        for _ in range(rng.randint(0, 4)):
            item = _entry(rng, dirty)
            # Distinct strings in a clean row (a repeated id is an error); a dirty one may repeat them.
            width = rng.randint(0, 4)
            tokens = [rng.choice(_TOKENS) for _ in range(width)] if dirty else rng.sample(_TOKENS[:8], width)
            item["top_logprobs"] = [_entry(rng, dirty, token) for token in tokens] if rng.random() < 0.9 else None
            items.append(item)
        if not dirty and rng.random() < 0.7:
            # The content the chosen tokens spell, so their ids pass the decode check.
            message["content"] = "".join(item["token"] for item in items if isinstance(item["token"], str))
        roll = rng.random()
        message["logprobs"] = None if roll < 0.05 else {"content": None} if roll < 0.08 else items if roll < 0.13 else {"content": items}
    return message


def _record(rng: random.Random, dirty: bool) -> dict[str, Any]:
    messages = []
    for _ in range(rng.randint(0 if dirty and rng.random() < 0.1 else 1, 3)):
        if rng.random() < 0.5:
            messages.append(_assistant(rng, dirty))
        else:
            messages.append({"role": rng.choice(["system", "user"]), "content": _text(rng, 6)})
    record: dict[str, Any] = {"messages": messages}
    if rng.random() < 0.7:
        record["system_prompt"] = _text(rng, 4) if rng.random() < 0.9 else (None if not dirty else rng.choice([7, None]))
    if rng.random() < 0.8:
        metadata: dict[str, Any] = {"sample_idx": rng.randint(0, 50)}
        if rng.random() < 0.6:
            metadata["finish_reason"] = rng.choice(["stop", "length"])
        if rng.random() < 0.1:
            metadata["metadata"] = rng.randint(0, 3)
        if rng.random() < 0.1:
            metadata["nested"] = {"metadata": {"x": 1}}
        if rng.random() < 0.1:
            metadata["x"] = math.nan
        if rng.random() < 0.05:
            metadata["big"] = 2**70
        if rng.random() < 0.1:
            metadata["teacher"] = {"logprobs": rng.choice(["raw", "tempered"])}
        record["metadata"] = metadata if not (dirty and rng.random() < 0.03) else "not an object"
    elif rng.random() < 0.5:
        record["metadata"] = None
    if rng.random() < 0.5:
        record["type"] = _text(rng, 4) if rng.random() < 0.95 else 3
    return record


def random_cases() -> Iterator[tuple[str, list[dict[str, Any]], dict[str, Any]]]:
    """(name, records, convert options) for RANDOM_CASES seeded random files of 1-6 records."""
    for number in range(RANDOM_CASES):
        rng = random.Random(number)
        dirty = number % 3 == 0
        records = [_record(rng, dirty) for _ in range(rng.randint(1, 6))]
        options: dict[str, Any] = {"min_prob_mass": rng.choice([0.5, 0.9, 0.99, 1.0]), "max_unmapped_rate": 1.0}
        if number % 7 == 0:
            options["strict"] = True
        if number % 5 == 0:
            options["append_eot"] = False
        yield f"random-{number:03d}", records, options


def fixture_cases() -> Iterator[tuple[str, list[dict[str, Any]], dict[str, Any]]]:
    from memdistill.convert.token_ids import load_text_tokenizer

    from . import test_convert as t

    vocab = load_text_tokenizer(MODEL).vocab
    yield "mixed", t.mixed_records(vocab), {"min_prob_mass": 0.99}
    yield "seed", [t.SEED_RECORD, t.SEED_RECORD], {"min_prob_mass": 0.99}
    yield "special", t.special_records(vocab), {"min_prob_mass": 0.99}
    yield "block", t.block_records(vocab) * 3, {"min_prob_mass": 0.99, "max_unmapped_rate": 1.0}
    yield "block-no-eot", t.block_records(vocab), {"min_prob_mass": 0.9, "max_unmapped_rate": 1.0, "append_eot": False}


def write_records(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, allow_nan=True, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def digest_output(output: Path, figures: str) -> str:
    """sha256 of the written rows' values, the footer's counters, the rejects file and convert's figures."""
    from memdistill.convert.conversion import rejects_path

    parquet = pq.ParquetFile(output)
    footer = json.loads(parquet.metadata.metadata[b"memdistill.convert"])
    rows = parquet.read().to_pylist()
    rejects = rejects_path(output)
    listed = rejects.read_text().replace(str(output.parent), "") if rejects.exists() else None
    text = json.dumps({"rows": rows, "summary": footer, "rejects": listed, "figures": json.loads(figures)},
                      sort_keys=True, default=repr, allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def run_case(folder: Path, records: list[dict[str, Any]], options: dict[str, Any]) -> str:
    """The case's digest, or its error message (the file's path left out)."""
    from memdistill.convert.conversion import convert_file
    from memdistill.convert.figures import FiguresCollector

    source = write_records(folder / "in.jsonl", records)
    output = folder / "out.parquet"
    options = dict(options)
    min_prob_mass = options.pop("min_prob_mass")
    figures = FiguresCollector(min_prob_mass, (0.5, 0.9))
    try:
        convert_file(source, output, MODEL, min_prob_mass, figures=figures, **options)
    except UserError as exc:
        return "error: " + str(exc).replace(str(source), "in.jsonl")
    counted = figures.finish(source, output)
    counted.input_bytes = counted.parquet_bytes = 0  # sizes of files, not what was counted
    return digest_output(output, counted.to_json())


def all_cases() -> Iterator[tuple[str, list[dict[str, Any]], dict[str, Any]]]:
    yield from fixture_cases()
    yield from random_cases()


def main() -> int:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="record the current outputs in tests/data/convert_golden.json")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, records, options in all_cases():
            results[name] = run_case(Path(folder), records, options)
    errors = sum(value.startswith("error:") for value in results.values())
    print(f"{len(results)} cases, {errors} errors")
    if args.write:
        GOLDEN.write_text(json.dumps(results, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
