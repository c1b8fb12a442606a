"""Row lineage and the footer: every input that made a row changes what the row and the file record."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

import memdistill
from memdistill.convert.conversion import convert_file
from memdistill.convert.token_ids import load_text_tokenizer
from memdistill.core.lineage import chat_template_digest, dvc_md5, embedded_weights_sha256, read_file_lineage, weights_digest
from memdistill.core.models import embedded_gguf, embedded_tokenizer_dir
from memdistill.core.prompt_file import read_prompts
from memdistill.generate.engine import generate_dataset
from memdistill.generate.teachers.base import Completion, TeacherRequest
from stages import convert as convert_stage
from stages import snapshots as snapshots_stage

MODEL = "smollm2-135m-instruct"
IM_END = 2


class AnswersFour:
    """A teacher that answers "4" (with its real id) to everything, described as `describe` says."""

    def __init__(self, described: dict[str, Any]) -> None:
        self.described = described
        self.four = load_text_tokenizer(MODEL).vocab["4"]

    def describe(self) -> dict[str, Any]:
        return {"base_url": None, "max_tokens": 4, "temperature": 0.0, "top_p": 1.0, "top_logprobs": 1, "seed": 0, "logprobs": "tempered",
                **self.described}

    async def stream(self, requests: Sequence[TeacherRequest]) -> AsyncIterator[Completion]:
        for request in requests:
            items = [{"token": "4", "logprob": 0.0, "token_id": self.four, "top_logprobs": [{"token": "4", "logprob": 0.0, "token_id": self.four}]},
                     {"token": "<|im_end|>", "logprob": 0.0, "token_id": IM_END,
                      "top_logprobs": [{"token": "<|im_end|>", "logprob": 0.0, "token_id": IM_END}]}]
            # A wall-clock duration, as real teachers report: it must not reach the dataset.
            yield Completion(request.sample_idx, "4", [self.four, IM_END], items, "stop", 10, 2, time.perf_counter())

    async def aclose(self) -> None:
        return None


MEMORY = [
    {"type": "Observation", "content": "2 + 2?"}, {"type": "Action", "content": "4"}, {"type": "Feedback", "content": "correct"},
    {"type": "Observation", "content": "3 + 3?"}, {"type": "Action", "content": "6"}, {"type": "Feedback", "content": "correct"},
]
TEACHER = {"backend": "local", "flavor": None, "model": MODEL}


def lineage(tmp_path: Path, memory=MEMORY, teacher=TEACHER, strategy: str = "rolling_window", window_k: int = 3) -> dict[str, Any]:
    """Snapshots -> generate -> convert on a tiny checkpoint; the first row's lineage struct."""
    checkpoint = tmp_path / "ep"
    checkpoint.mkdir(parents=True, exist_ok=True)
    (checkpoint / "memory_1.jsonl").write_text("".join(json.dumps(e) + "\n" for e in memory), encoding="utf-8")
    config = snapshots_stage.SnapshotsConfig(checkpoint_dir=str(checkpoint), strategy=strategy, window_k=window_k, tokenizer=None,
                                             max_prompt_tokens=None)
    snapshots_stage.run(config, tmp_path / "prompts.jsonl")
    generate_dataset(read_prompts(tmp_path / "prompts.jsonl"), AnswersFour(teacher), tmp_path / "dataset.jsonl", tmp_path / "cache")
    convert_file(tmp_path / "dataset.jsonl", tmp_path / "dataset.parquet", MODEL, 0.99)
    return pq.read_table(tmp_path / "dataset.parquet").column("metadata")[1].as_py()["lineage"]


def test_each_input_changes_the_row_lineage(tmp_path: Path) -> None:
    base = lineage(tmp_path / "base")
    assert base["snapshot"] == "memory_1.jsonl" and len(base["snapshot_sha256"]) == 16
    assert base["teacher_model"] == MODEL and base["teacher_backend"] == "local" and base["teacher_flavor"] is None
    assert base["teacher_weights"] == f"sha256:{embedded_weights_sha256()[:16]}"
    assert base["chat_template_sha256"] == chat_template_digest(MODEL) is not None
    assert base["strategy"] == "rolling_window" and json.loads(base["strategy_params"]) == {"window_k": 3}
    assert base["memdistill_version"] == memdistill.__version__

    other_memory = [*MEMORY[:-1], {"type": "Feedback", "content": "wrong"}]
    changed = {
        "snapshot_sha256": lineage(tmp_path / "memory", memory=other_memory),
        "strategy_params": lineage(tmp_path / "window", window_k=6),
        "strategy": lineage(tmp_path / "strategy", strategy="full_memory"),
        "teacher_flavor": lineage(tmp_path / "flavor", teacher={"backend": "openai", "flavor": "vllm", "model": MODEL}),
    }
    for field, seen in changed.items():
        assert seen[field] != base[field], field
        assert {k: v for k, v in seen.items() if k != field} != {} and seen["snapshot"] == "memory_1.jsonl"
    # A server's weights and template are its own: not claimed.
    assert changed["teacher_flavor"]["teacher_weights"] is None and changed["teacher_flavor"]["chat_template_sha256"] is None


def test_a_changed_chat_template_changes_its_digest(tmp_path: Path) -> None:
    folder = tmp_path / "tokenizer"
    shutil.copytree(embedded_tokenizer_dir(), folder)
    before = chat_template_digest(str(folder))
    config_file = folder / "tokenizer_config.json"
    template_file = folder / "chat_template.jinja"
    if template_file.is_file():
        template_file.write_text(template_file.read_text() + "{# changed #}")
    else:
        config = json.loads(config_file.read_text())
        config["chat_template"] += "{# changed #}"
        config_file.write_text(json.dumps(config))
    changed = tmp_path / "changed"
    shutil.copytree(folder, changed)  # a new path: tokenizers are cached per path
    assert before is not None and chat_template_digest(str(changed)) not in (None, before)
    assert chat_template_digest("no-such-org/no-such-model") is None  # never reaches for the network


def test_embedded_weights_digest_is_the_gguf_files_sha256() -> None:
    digest = hashlib.sha256(embedded_gguf().read_bytes()).hexdigest()
    assert embedded_weights_sha256() == digest
    assert weights_digest(MODEL) == f"sha256:{digest[:16]}"


def test_dvc_md5_matches_what_dvc_records(tmp_path: Path) -> None:
    """DVC's own hashing (dvc_data): a file's md5, and a directory's tree digest with `.dir`."""
    from dvc_data.hashfile.hash import file_md5
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.tree import Tree

    (tmp_path / "one.jsonl").write_bytes(b'{"a": 1}\r\n{"b": 2}\n')
    assert dvc_md5(tmp_path / "one.jsonl") == file_md5(str(tmp_path / "one.jsonl"))
    folder = tmp_path / "dir"
    (folder / "sub").mkdir(parents=True)
    (folder / "part-00000.jsonl").write_text("x\n")
    (folder / "sub" / "b").write_text("y\n")
    tree = Tree()
    for path in (folder / "part-00000.jsonl", folder / "sub" / "b"):
        tree.add(path.relative_to(folder).parts, None, HashInfo("md5", file_md5(str(path))))
    tree.digest()
    assert dvc_md5(folder) == tree.hash_info.value


def test_the_footer_holds_every_stage_params_and_the_input_md5(tmp_path: Path) -> None:
    lineage(tmp_path)
    params = tmp_path / "params.yaml"
    params.write_text("snapshots:\n  strategy: rolling_window\ngenerate:\n  max_tokens: 4\nconvert:\n  min_prob_mass: 0.9\nstats: {}\n")
    source, output = tmp_path / "dataset.jsonl", tmp_path / "out.parquet"
    config = convert_stage.ConvertConfig(model=MODEL, min_prob_mass=0.9, validation_fraction=0)
    convert_stage.run(config, source, output, params_path=params)
    stored = read_file_lineage(output)
    assert stored["params"]["snapshots"] == {"strategy": "rolling_window"} and stored["params"]["generate"] == {"max_tokens": 4}
    assert stored["params"]["convert"]["min_prob_mass"] == 0.9 and "stats" not in stored["params"]
    assert stored["inputs"] == {str(source): hashlib.md5(source.read_bytes()).hexdigest()}
    first = output.read_bytes()
    convert_stage.run(config, source, output, params_path=params)
    assert output.read_bytes() == first
    params.write_text(params.read_text().replace("max_tokens: 4", "max_tokens: 5"))
    convert_stage.run(config, source, output, params_path=params)
    assert read_file_lineage(output)["params"]["generate"] == {"max_tokens": 5}


@pytest.mark.parametrize("summary_flag", ["--summary"])
def test_inspect_summary_prints_the_lineage(tmp_path: Path, capsys, summary_flag: str) -> None:
    from memdistill.cli import main as cli_main

    lineage(tmp_path)
    assert cli_main(["inspect", str(tmp_path / "dataset.parquet"), summary_flag]) == 0
    out = capsys.readouterr().out
    assert "lineage (1 distinct over the rows)" in out and "memory_1.jsonl" in out and "rolling_window" in out
    assert f"sha256:{embedded_weights_sha256()[:16]}" in out


def test_generate_then_convert_twice_without_cache_writes_the_same_bytes(tmp_path: Path) -> None:
    lineage(tmp_path)
    outputs = []
    for _ in range(2):
        generate_dataset(read_prompts(tmp_path / "prompts.jsonl"), AnswersFour(TEACHER), tmp_path / "fresh.jsonl", tmp_path / "cache",
                         use_cache=False)
        convert_stage.run(convert_stage.ConvertConfig(model=MODEL), tmp_path / "fresh.jsonl", tmp_path / "fresh.parquet")
        outputs.append([(tmp_path / name).read_bytes() for name in ("fresh.jsonl", "fresh.parquet", "fresh.validation.parquet")])
    assert outputs[0] == outputs[1]
