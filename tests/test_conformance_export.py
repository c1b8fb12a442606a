"""The pure part of the exported teacher's conformance (`make conformance` runs the 4.55 environment): the
fields transformers 4.x needs, the sample texts and chats, and when a comparison of two probes passes."""

from __future__ import annotations

import copy

import pytest

from memdistill.core.models import LEGACY_TOKENIZER_CLASS, legacy_config_fields, legacy_tokenizer_fields
from memdistill.generate.conformance_export import MAX_ABS_LOGPROB_DIFF, compare_probes, sample_request
from tests.conftest import EXAMPLE_CHECKPOINT

# What transformers 5 writes for the embedded teacher (its config.json and tokenizer_config.json, abridged).
NEW_CONFIG = {"model_type": "llama", "dtype": "float32", "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"}}
NEW_TOKENIZER_CONFIG = {"backend": "tokenizers", "eos_token": "<|im_end|>", "is_local": True, "local_files_only": False,
                        "model_max_length": 1000000000000000019884624838656, "tokenizer_class": "TokenizersBackend"}


def test_the_config_carries_rope_theta_and_torch_dtype_for_transformers_4() -> None:
    legacy = legacy_config_fields(NEW_CONFIG)
    assert legacy["rope_theta"] == 100000.0 and legacy["rope_scaling"] is None and legacy["torch_dtype"] == "float32"
    assert legacy["rope_parameters"] == NEW_CONFIG["rope_parameters"]  # transformers 5 still reads its own field


def test_a_scaled_rope_keeps_its_scaling_for_transformers_4() -> None:
    rope = {"rope_theta": 500000.0, "rope_type": "llama3", "factor": 8.0}
    legacy = legacy_config_fields({"rope_parameters": rope})
    assert legacy["rope_theta"] == 500000.0 and legacy["rope_scaling"] == {"rope_type": "llama3", "factor": 8.0}


def test_a_config_without_rope_parameters_is_left_alone() -> None:
    old = {"model_type": "llama", "rope_theta": 100000.0, "torch_dtype": "bfloat16"}
    assert legacy_config_fields(old) == old


def test_the_tokenizer_config_names_a_class_transformers_4_knows() -> None:
    legacy = legacy_tokenizer_fields(NEW_TOKENIZER_CONFIG, 8192)
    assert legacy["tokenizer_class"] == LEGACY_TOKENIZER_CLASS == "PreTrainedTokenizerFast"
    assert legacy["model_max_length"] == 8192 and legacy["eos_token"] == "<|im_end|>"
    assert "is_local" not in legacy and "local_files_only" not in legacy
    specific = legacy_tokenizer_fields({"tokenizer_class": "LlamaTokenizer", "model_max_length": 4096}, 8192)
    assert specific == {"tokenizer_class": "LlamaTokenizer", "model_max_length": 4096}


def test_the_sample_request_covers_texts_chats_and_a_long_memory() -> None:
    snapshot = EXAMPLE_CHECKPOINT / "memory_000200.jsonl"
    request = sample_request(snapshot, "You solve problems.")
    observations = sum('"Observation"' in line for line in snapshot.read_text(encoding="utf-8").splitlines())
    assert len(request["texts"]) > observations and "" in request["texts"]
    with_answer = [chat for chat in request["chats"] if chat["messages"][-1]["role"] == "assistant"]
    assert with_answer and all(not chat["add_generation_prompt"] for chat in with_answer)
    longest = max(request["chats"], key=lambda chat: len(chat["messages"][-1]["content"]))
    assert "OBSERVATION:" in longest["messages"][-1]["content"] and "FEEDBACK:" in longest["messages"][-1]["content"]
    assert any(chat["messages"][0]["role"] != "system" for chat in request["chats"])  # the template's default system


def probe_output() -> dict:
    return {
        "transformers": "5.0", "special_tokens": {"eos_token": ["<|im_end|>", 2]}, "vocabulary": 10,
        "rope_inv_freq": [1.0, 0.5], "model_class": "LlamaForCausalLM", "model_dtype": "float32",
        "tied_embeddings": True, "model_max_length": 8192, "config": {"rope_theta": 100000.0, "transformers_version": "5.0"},
        "text_ids": [[1, 2], [3]], "decoded": ["ab", "c"], "chat_texts": ["<s>hi"], "chat_ids": [[1, 4]],
        "sequences": [[1, 4, 5]],
        "scores": [{"top_ids": [[4, 6], [5, 2], [2, 9]], "top_logprobs": [[-0.1, -2.0], [-0.2, -1.8], [-0.3, -1.5]],
                    "argmax": [4, 5, 2], "next_logprob": [-0.1, -0.2]}],
    }


def test_identical_probes_pass() -> None:
    figures = compare_probes(probe_output(), probe_output())
    assert figures.passed and figures.max_abs_logprob_diff == 0.0 and figures.top1_agreement == 1.0
    assert (figures.texts, figures.chats, figures.positions) == (2, 1, 3) and figures.differing_config_fields == {}


@pytest.mark.parametrize("change, failed", [
    (lambda old: old["text_ids"].__setitem__(1, [3, 0]), "texts_with_identical_ids"),
    (lambda old: old["chat_texts"].__setitem__(0, "<s> hi"), "chats_with_identical_text"),
    (lambda old: old["special_tokens"].__setitem__("eos_token", ["</s>", 2]), "special_tokens_identical"),
    (lambda old: old.__setitem__("model_dtype", "bfloat16"), "model_loaded_identically"),
    # what transformers 4.55 built from the folder before the fix: rope_theta 10000 instead of 100000
    (lambda old: old.__setitem__("rope_inv_freq", [1.0, 0.6]), "rope_identical"),
    (lambda old: old["scores"][0]["argmax"].__setitem__(1, 2), "top1_agreement"),
    (lambda old: old["scores"][0]["top_logprobs"][2].__setitem__(1, -1.5 - 10 * MAX_ABS_LOGPROB_DIFF), "max_abs_logprob_diff"),
    (lambda old: old["scores"][0]["next_logprob"].__setitem__(0, -0.1 + 10 * MAX_ABS_LOGPROB_DIFF), "max_abs_logprob_diff"),
])
def test_any_difference_fails(change, failed: str) -> None:
    old = copy.deepcopy(probe_output())
    change(old)
    figures = compare_probes(probe_output(), old)
    assert not figures.passed, failed
    assert getattr(figures, failed) != getattr(compare_probes(probe_output(), probe_output()), failed)


def test_a_differing_config_field_is_reported() -> None:
    old = copy.deepcopy(probe_output())
    old["config"]["rope_theta"] = 10000.0
    old["transformers"] = "4.55.4"
    old["config"]["top_k"] = 50  # transformers 4 keeps generation defaults in the model config
    new = probe_output()
    new["config"]["rope_parameters"] = {"rope_theta": 100000.0}
    figures = compare_probes(new, old)
    assert figures.differing_config_fields == {"rope_theta": [100000.0, 10000.0]}
    assert figures.config_fields_only_old == ["top_k"] and figures.config_fields_only_new == ["rope_parameters"]
    assert figures.old_transformers == "4.55.4"


def test_probes_of_different_token_ids_cannot_be_compared() -> None:
    old = copy.deepcopy(probe_output())
    old["sequences"] = [[1, 4, 6]]
    with pytest.raises(ValueError, match="different token ids"):
        compare_probes(probe_output(), old)
