"""Conformance of the exported teacher: the folder `memdistill export-teacher` writes loads as the same model
in transformers 4.55 (what cartridges' training loop pins) and in the project's own transformers.

`make conformance` runs `python -m memdistill.generate.conformance_export --old-python .venv-tf455/bin/python`:
1. `memdistill export-teacher` writes the folder (with the project's transformers);
2. a probe runs in each environment (this file run as a script: stdlib at the top, torch and transformers
   imported inside, so the 4.55 environment needs nothing of memdistill). It tokenizes sample texts from the
   bundled snapshot, renders chats through the chat template, and scores token ids: the project's
   environment scores its own chat ids, the 4.55 one scores exactly those ids;
3. the figures: identical tokenizer ids, identical chat-template text and ids, the largest absolute
   difference of the logprobs (the top-k rows and each next token's) and the top-1 agreement.
The run passes when the ids and texts are identical, the difference is at most 1e-4 and top-1 agrees on
every position.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_ABS_LOGPROB_DIFF = 1e-4
TOP_K = 20
# Long enough to reach the positions where a wrong rope_theta shows most, short enough for 2 CPU cores.
MAX_SEQUENCE_TOKENS = 2048
# Texts where tokenizers tend to part ways: spaces, newlines, special-token strings, non-ASCII, digits, code.
EDGE_TEXTS = [
    "", " ", "  leading spaces", "trailing space ", "\n\n\tmixed\r\nwhitespace", "<|im_start|>user\nhi<|im_end|>",
    "<|endoftext|>", "Zürich – 80 km/h × 3 = 240 km; naïve café", "日本語のテキスト", "emoji 🙂👍🏽", "12345678901234567890",
    "def f(x):\n    return {'a': [1, 2.5e-3]}\n", "Answer: 12", "   ", "a" * 300,
]


# ---------------------------------------------------------------------------------------------- the probe


def _chat_ids(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
    if isinstance(ids, dict) or hasattr(ids, "keys"):  # transformers 5 may return a BatchEncoding
        ids = ids["input_ids"]
    return [int(i) for i in ids]


def _score(model: Any, ids: list[int], top_k: int) -> dict[str, list[Any]]:
    """Per position t: the top-k of log p(. | ids[:t+1]), the argmax and the logprob of ids[t+1]."""
    import torch

    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    top = torch.topk(logprobs, top_k, dim=-1)
    following = torch.tensor(ids[1:] + [ids[-1]])
    return {
        "top_ids": top.indices.tolist(),
        "top_logprobs": top.values.tolist(),
        "argmax": logprobs.argmax(dim=-1).tolist(),
        "next_logprob": logprobs.gather(1, following[:, None])[:-1, 0].tolist(),
    }


def probe(folder: Path, request: dict[str, Any]) -> dict[str, Any]:
    """What this environment's transformers makes of the folder: tokenizer, chat template, config, logprobs."""
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    config = AutoConfig.from_pretrained(str(folder))
    # dtype "auto" takes the folder's own dtype field: the 4.x name is torch_dtype, the 5.x name dtype.
    dtype_kwarg = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    model = AutoModelForCausalLM.from_pretrained(str(folder), **{dtype_kwarg: "auto"}).eval()
    chats = request["chats"]
    rendered = [tokenizer.apply_chat_template(chat["messages"], tokenize=False,
                                              add_generation_prompt=chat["add_generation_prompt"]) for chat in chats]
    chat_ids = [_chat_ids(tokenizer, chat["messages"], chat["add_generation_prompt"]) for chat in chats]
    sequences = request.get("sequences") or [ids[:MAX_SEQUENCE_TOKENS] for ids in chat_ids]
    rotary = getattr(getattr(model, "model", model), "rotary_emb", None)
    return {
        "transformers": transformers.__version__,
        "tokenizer_class": type(tokenizer).__name__,
        "special_tokens": {name: [getattr(tokenizer, name), getattr(tokenizer, f"{name}_id")]
                           for name in ("bos_token", "eos_token", "pad_token", "unk_token")},
        "vocabulary": len(tokenizer),
        "model_max_length": tokenizer.model_max_length,
        "model_class": type(model).__name__,
        "model_dtype": str(model.dtype).removeprefix("torch."),
        "tied_embeddings": model.get_input_embeddings().weight.data_ptr() == model.get_output_embeddings().weight.data_ptr(),
        "rope_inv_freq": rotary.inv_freq.tolist() if rotary is not None else None,
        "config": {key: value for key, value in config.to_dict().items() if not key.startswith("_")},
        "text_ids": [tokenizer.encode(text, add_special_tokens=True) for text in request["texts"]],
        "decoded": [tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) for text in request["texts"]],
        "chat_texts": rendered,
        "chat_ids": chat_ids,
        "sequences": sequences,
        "scores": [_score(model, ids, request.get("top_k", TOP_K)) for ids in sequences],
    }


# -------------------------------------------------------------------------------------------- the figures


@dataclass
class ExportConformance:
    old_transformers: str = ""
    new_transformers: str = ""
    texts: int = 0
    texts_with_identical_ids: int = 0
    texts_with_identical_decoding: int = 0
    chats: int = 0
    chats_with_identical_text: int = 0
    chats_with_identical_ids: int = 0
    special_tokens_identical: bool = False
    # the same model class, dtype (loaded with dtype "auto"), tied embeddings and context window
    model_loaded_identically: bool = False
    rope_identical: bool = False
    positions: int = 0
    top1_agreement: float = 0.0
    rows_with_different_topk_ids: int = 0
    max_abs_logprob_diff: float = float("inf")
    mean_abs_logprob_diff: float = float("inf")
    differing_config_fields: dict[str, list[Any]] = field(default_factory=dict)
    config_fields_only_new: list[str] = field(default_factory=list)
    config_fields_only_old: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (
            self.texts > 0 and self.chats > 0 and self.positions > 0
            and self.texts_with_identical_ids == self.texts
            and self.texts_with_identical_decoding == self.texts
            and self.chats_with_identical_text == self.chats == self.chats_with_identical_ids
            and self.special_tokens_identical and self.model_loaded_identically and self.rope_identical
            and self.top1_agreement == 1.0
            and self.max_abs_logprob_diff <= MAX_ABS_LOGPROB_DIFF
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed, "threshold": MAX_ABS_LOGPROB_DIFF}


_MODEL_FIGURES = ("model_class", "model_dtype", "tied_embeddings", "model_max_length")


def _same_floats(left: list[float] | None, right: list[float] | None, tolerance: float = 1e-6) -> bool:
    if left is None or right is None:
        return left is right
    return len(left) == len(right) and all(abs(a - b) <= tolerance * max(1.0, abs(a)) for a, b in zip(left, right))


def compare_probes(new: dict[str, Any], old: dict[str, Any]) -> ExportConformance:
    """Figures for the same folder seen by two transformers versions (`old` scored `new`'s sequences)."""
    figures = ExportConformance(old_transformers=old["transformers"], new_transformers=new["transformers"])
    figures.texts = len(new["text_ids"])
    figures.texts_with_identical_ids = sum(a == b for a, b in zip(new["text_ids"], old["text_ids"]))
    figures.texts_with_identical_decoding = sum(a == b for a, b in zip(new["decoded"], old["decoded"]))
    figures.chats = len(new["chat_texts"])
    figures.chats_with_identical_text = sum(a == b for a, b in zip(new["chat_texts"], old["chat_texts"]))
    figures.chats_with_identical_ids = sum(a == b for a, b in zip(new["chat_ids"], old["chat_ids"]))
    figures.special_tokens_identical = new["special_tokens"] == old["special_tokens"] and new["vocabulary"] == old["vocabulary"]
    figures.model_loaded_identically = all(new[key] == old[key] for key in _MODEL_FIGURES)
    figures.rope_identical = _same_floats(new["rope_inv_freq"], old["rope_inv_freq"])
    if old["sequences"] != new["sequences"]:
        raise ValueError("the two probes scored different token ids; the old one must score the new one's sequences")
    agree = positions = differing_rows = 0
    diffs: list[float] = []
    for mine, theirs in zip(new["scores"], old["scores"]):
        for t, (top_ids, top_lps) in enumerate(zip(mine["top_ids"], mine["top_logprobs"])):
            positions += 1
            agree += mine["argmax"][t] == theirs["argmax"][t]
            other = dict(zip(theirs["top_ids"][t], theirs["top_logprobs"][t]))
            if set(other) != set(top_ids):
                differing_rows += 1
            diffs += [abs(lp - other[i]) for i, lp in zip(top_ids, top_lps) if i in other]
        diffs += [abs(a - b) for a, b in zip(mine["next_logprob"], theirs["next_logprob"])]
    figures.positions = positions
    figures.top1_agreement = agree / positions if positions else 0.0
    figures.rows_with_different_topk_ids = differing_rows
    if diffs:
        figures.max_abs_logprob_diff = max(diffs)
        figures.mean_abs_logprob_diff = sum(diffs) / len(diffs)
    # The config each version built, for the record (the checks above decide): a field both versions set to
    # different values, and fields only one of them has (4.x keeps generation defaults in the model config).
    both = {key for key in set(new["config"]) & set(old["config"])
            if new["config"][key] is not None and old["config"][key] is not None and key != "transformers_version"}
    figures.differing_config_fields = {key: [new["config"][key], old["config"][key]]
                                       for key in sorted(both) if new["config"][key] != old["config"][key]}
    figures.config_fields_only_new = sorted(key for key, value in new["config"].items()
                                            if value is not None and old["config"].get(key) is None)
    figures.config_fields_only_old = sorted(key for key, value in old["config"].items()
                                            if value is not None and new["config"].get(key) is None)
    return figures


# ---------------------------------------------------------------------------------------------- the run


def sample_request(snapshot: Path, system_prompt: str) -> dict[str, Any]:
    """Texts and chats from a memory snapshot: every entry's text, one chat per observation (with the action
    that answered it, and as a prompt awaiting the answer), one long chat holding the whole memory (positions
    deep into the context), and one without a system message (the template's default system text)."""
    entries = [json.loads(line) for line in snapshot.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = [entry["content"] if isinstance(entry["content"], str) else json.dumps(entry["content"], ensure_ascii=False)
             for entry in entries]
    system = {"role": "system", "content": system_prompt}
    chats: list[dict[str, Any]] = []
    for entry, following, text in zip(entries, entries[1:], texts[1:]):
        if entry["type"] == "Observation" and following["type"] == "Action":
            user = {"role": "user", "content": entry["content"]}
            chats.append({"messages": [system, user, {"role": "assistant", "content": text}], "add_generation_prompt": False})
            chats.append({"messages": [system, user], "add_generation_prompt": True})
    memory = "\n".join(f"{entry['type'].upper()}: {text}" for entry, text in zip(entries, texts))
    chats.append({"messages": [system, {"role": "user", "content": memory}], "add_generation_prompt": True})
    chats.append({"messages": [{"role": "user", "content": texts[0]}], "add_generation_prompt": True})
    return {"texts": EDGE_TEXTS + texts + [system_prompt], "chats": chats, "top_k": TOP_K}


def _run_probe(python: Path, folder: Path, request: dict[str, Any], work: Path, name: str) -> dict[str, Any]:
    request_path, output_path, log_path = work / f"{name}.request.json", work / f"{name}.probe.json", work / f"{name}.log"
    request_path.write_text(json.dumps(request))
    # -P: the script's own folder (memdistill/) must not shadow the packages transformers imports.
    command = [str(python), "-P", str(Path(__file__).resolve()), "probe", str(folder), str(request_path), str(output_path)]
    log.info("running %s", " ".join(command))
    with open(log_path, "w") as handle:
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=_offline_env())
    if done.returncode != 0:
        raise RuntimeError(f"the probe in {python} exited with {done.returncode}; see {log_path}")
    return json.loads(output_path.read_text())


def _offline_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def run(work: Path, old_python: Path, new_python: Path, snapshot: Path, system_prompt: Path) -> ExportConformance:
    work.mkdir(parents=True, exist_ok=True)
    folder = work / "model"
    subprocess.run([str(new_python), "-m", "memdistill.cli", "export-teacher", str(folder)], check=True)
    request = sample_request(snapshot, system_prompt.read_text(encoding="utf-8").strip())
    new = _run_probe(new_python, folder, request, work, "new")
    old = _run_probe(old_python, folder, {**request, "sequences": new["sequences"]}, work, "old")
    return compare_probes(new, old)


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["probe"]:  # run as a script inside the other environment
        folder, request_path, output_path = map(Path, argv[1:4])
        output_path.write_text(json.dumps(probe(folder, json.loads(request_path.read_text()))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("build/conformance-export"))
    parser.add_argument("--old-python", type=Path, default=Path(".venv-tf455/bin/python"))
    parser.add_argument("--new-python", type=Path, default=Path(sys.executable))
    parser.add_argument("--snapshot", type=Path, default=Path("data/checkpoints/ep_000200/memory_000200.jsonl"))
    parser.add_argument("--system-prompt", type=Path, default=Path("data/checkpoints/ep_000200/system_prompt.txt"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    figures = run(args.work, args.old_python, args.new_python, args.snapshot, args.system_prompt)
    report = {**figures.to_dict(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    (args.work / "figures.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0 if figures.passed else 1


if __name__ == "__main__":
    sys.exit(main())
