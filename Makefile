# adcopilot: two commands on a fresh machine.
#   make demo   -> virtual environment, package, offline assets, then a real ELPV inspection
#   make test   -> the same setup, then lint and the whole test suite (unit + integration)
# A second run skips finished work (stamp files, cached assets).

PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup assets demo test test-unit test-integration lint bench clean

$(VENV)/.stamp-install: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[all,dev]"
	touch $@

setup: $(VENV)/.stamp-install

assets: setup
	$(BIN)/adcopilot models fetch

demo: assets
	$(BIN)/adcopilot demo

lint: setup
	$(BIN)/ruff check src tests benchmarks

test-unit: setup
	$(PY) -m pytest tests/unit -q

test-integration: assets
	$(PY) -m pytest tests/integration -q

test: assets lint
	$(PY) -m pytest tests -q

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
