"""Proof that the gain measures the memory: the real embedded teacher, greedy, on a checkpoint built here.

Half of the samples ask for a fact stated only in another sample's feedback (with exclude_current the fact is
in the teacher's memory, never in the sample itself); half ask what needs no memory. The teacher (135M)
sometimes answers a no-memory question by quoting a fact from its memory: such an answer depends on the
memory, so it is classified by its text and counted with the memory-dependent answers, not dropped.
Also checks, over every row, that the scored positions are the parquet's assistant token ids.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from memdistill.cli import main as cli_main
from memdistill.gain.gain_file import read_table

# (question needing the fact, the fact, a word of the answer that only the fact gives)
FACTS = [
    ("What is the secret code of the blue door? Reply with the code only.", "The secret code of the blue door is 4817.", "4817"),
    ("What is Maria's favourite colour? Reply with the colour only.", "Maria's favourite colour is turquoise.", "turquoise"),
    ("What is the name of the server? Reply with the name only.", "The server is called Zanthor.", "zanthor"),
    ("On which floor is the meeting room? Reply with the number only.", "The meeting room is on floor 52.", "52"),
]
# (question needing no memory, its answer) - each carries one fact in its feedback, for the others to see.
PLAIN = [
    ("What is the capital of France? Reply with the city only.", "Paris"),
    ("What colour is the sky on a clear day? Reply with the colour only.", "Blue"),
    ("How many legs does a dog have? Reply with the number only.", "4"),
    ("What is the opposite of hot? Reply with one word only.", "Cold"),
]


def write_checkpoint(folder: Path) -> Path:
    entries = []
    for (question, fact, answer), (plain, plain_answer) in zip(FACTS, PLAIN):
        entries += [{"type": "Observation", "content": question}, {"type": "Action", "content": "I do not know."},
                    {"type": "Feedback", "content": "Wrong."}]
        entries += [{"type": "Observation", "content": plain}, {"type": "Action", "content": plain_answer},
                    {"type": "Feedback", "content": f"Correct. Note for later: {fact}"}]
    checkpoint = folder / "ep_000001"
    checkpoint.mkdir()
    (checkpoint / "memory_000001.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries), encoding="utf-8")
    return checkpoint


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    folder = tmp_path_factory.mktemp("proof")
    checkpoint = write_checkpoint(folder)
    run = [
        ["snapshots", "--checkpoint-dir", str(checkpoint), "--strategy", "exclude_current", "--output", str(folder / "prompts.jsonl")],
        ["generate", "--input", str(folder / "prompts.jsonl"), "--output", str(folder / "dataset.jsonl"), "--max-tokens", "12",
         "--temperature", "0", "--top-logprobs", "8", "--cache-dir", str(folder / "responses")],
        ["gain", "--prompts", str(folder / "prompts.jsonl"), "--input", str(folder / "dataset.jsonl"), "--output", str(folder / "gain.parquet")],
        ["convert", "--input", str(folder / "dataset.jsonl"), "--output", str(folder / "dataset.parquet"), "--gain", str(folder / "gain.parquet")],
    ]
    for command in run:
        assert cli_main(command) == 0, command[0]
    return folder


def test_answers_that_need_the_memory_gain_at_least_three_times_more(pipeline):
    gains = {row["key"]: row for row in read_table(pipeline / "gain.parquet").to_pylist()}
    answers = {}
    for line in (pipeline / "dataset.jsonl").read_text().splitlines():
        record = json.loads(line)
        answers[record["metadata"]["sample_idx"]] = record["messages"][-1]["content"].lower()
    assert len(gains) == 2 * len(FACTS) and all(row["status"] == "measured" for row in gains.values())
    needs, plain, quoting = [], [], []
    for key, row in gains.items():
        if key % 2 == 0:  # the fact questions (samples 0, 2, 4, 6)
            needs.append(row["gain"])
        elif any(word in answers[key] for _, _, word in FACTS):
            quoting.append(row["gain"])  # a no-memory question answered from the memory: it depends on it
        else:
            plain.append(row["gain"])
    assert plain, f"every no-memory answer quoted the memory: {answers}"
    memory_dependent = np.mean(needs + quoting)
    assert memory_dependent >= 3 * max(np.mean(plain), 1e-9), (needs, quoting, plain, answers)
    assert np.mean(needs) >= 3 * max(np.mean(plain), 1e-9), (needs, plain, answers)


def test_every_scored_position_is_the_parquets_assistant_token(pipeline):
    gains = {row["key"]: row for row in read_table(pipeline / "gain.parquet").to_pylist()}
    table = pq.read_table(pipeline / "dataset.parquet").to_pylist()
    assert len(table) == len(gains)
    for row in table:
        scored = gains[row["metadata"]["sample_idx"]]
        assistant = [m for m in row["messages"] if m["role"] == "assistant"][0]
        assert scored["token_ids"] == assistant["token_ids"]
        assert len(scored["token_gains"]) == len(scored["logq_chosen"]) == assistant["top_logprobs"]["shape"][0]
        assert row["metadata"]["memory_gain"] == scored["gain"]
