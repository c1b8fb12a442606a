"""`memdistill export-teacher`: a model folder other engines load with the input embedding in place."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from memdistill.cli import main as cli_main  # noqa: E402
from memdistill.core.models import (  # noqa: E402
    EMBEDDED_MODEL,
    EMBEDDING_KEY,
    LM_HEAD_KEY,
    load_embedded_model,
    load_tokenizer,
    tied_state_dict,
)
from memdistill.generate.conformance_export import compare_probes, probe  # noqa: E402


def test_tied_weights_are_saved_under_the_embedding_name() -> None:
    shared = torch.arange(6.0).reshape(3, 2)
    # What a copy saved by safetensors' dedup holds: the shared tensor under lm_head only.
    tied = tied_state_dict({LM_HEAD_KEY: shared, "model.norm.weight": torch.ones(2)}, tied=True)
    assert set(tied) == {EMBEDDING_KEY, "model.norm.weight"} and torch.equal(tied[EMBEDDING_KEY], shared)
    untied = tied_state_dict({EMBEDDING_KEY: shared, LM_HEAD_KEY: shared * 2}, tied=False)
    assert torch.equal(untied[EMBEDDING_KEY], shared) and torch.equal(untied[LM_HEAD_KEY], shared * 2)
    assert untied[EMBEDDING_KEY].data_ptr() != shared.data_ptr()  # copies: safetensors refuses shared storage


def test_exported_folder_loads_with_the_same_logits(tmp_path: Path, capsys) -> None:
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path / "teacher"
    assert cli_main(["export-teacher", str(folder)]) == 0
    assert capsys.readouterr().out.strip() == str(folder)
    with safe_open(str(folder / "model.safetensors"), "pt") as weights:
        keys = set(weights.keys())
    config = json.loads((folder / "config.json").read_text())
    assert EMBEDDING_KEY in keys and config["tie_word_embeddings"] is True and LM_HEAD_KEY not in keys
    assert "quantization_config" not in config
    # What transformers 4.x (cartridges pins <= 4.55) needs to build the same model: without rope_theta it
    # silently uses 10000, and it has no class TokenizersBackend (`make conformance` loads the folder in 4.55).
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] == 100000.0 and config["rope_scaling"] is None
    assert config["architectures"] == ["LlamaForCausalLM"] and config["torch_dtype"] == config["dtype"] == "float32"
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast" and tokenizer_config["model_max_length"] == 8192
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    assert tokenizer.chat_template and (folder / "generation_config.json").is_file()
    text = "Zürich: 25 − 6 − 7 = 12 <|im_end|>"
    assert tokenizer.encode(text) == load_tokenizer(EMBEDDED_MODEL).encode(text)
    exported = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    reference = load_embedded_model()
    ids = torch.tensor([tokenizer.encode("What is 2 + 2?")])
    with torch.inference_mode():
        assert torch.equal(exported(input_ids=ids).logits, reference(input_ids=ids).logits)
    assert exported.get_input_embeddings().weight.abs().sum() > 0
    # The conformance probe runs in this transformers too, and a folder agrees with itself.
    chat = [{"role": "user", "content": "What is 2 + 2?"}]
    seen = probe(folder, {"texts": [text], "chats": [{"messages": chat, "add_generation_prompt": True}], "top_k": 5})
    assert compare_probes(seen, seen).passed and seen["model_dtype"] == "float32" and seen["tied_embeddings"]


def test_the_in_process_vllm_teacher_loads_the_exported_folder_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """backend vllm with the embedded teacher: the engine gets the exported folder (input embedding under its
    own name, float32), written once into the cache, never the de-quantised copy that lacks it."""
    from safetensors import safe_open

    from memdistill.core import models

    monkeypatch.setenv("MEMDISTILL_CACHE", str(tmp_path))
    folder = models.exported_teacher_dir()
    assert folder.parent == tmp_path / "models" / models.EMBEDDED_MODEL
    with safe_open(str(folder / "model.safetensors"), "pt") as weights:
        assert EMBEDDING_KEY in weights.keys()
    written = (folder / "model.safetensors").stat().st_mtime_ns
    assert models.exported_teacher_dir() == folder and (folder / "model.safetensors").stat().st_mtime_ns == written
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".export-")]  # no staging folder left
