# adcopilot: two commands on a fresh machine.
#   make demo   -> virtual environment, package, offline assets, then a real ELPV inspection
#   make test   -> the same setup, then lint and the whole test suite (unit + integration)
#   make mutation -> mutation testing of the core modules (slow: hours on 2 cores; not part of test)
# A second run skips finished work (stamp files, cached assets).

PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup assets browser demo test test-unit test-integration lint bench mutation clean

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

# Headless Chromium for the web page's end-to-end test (Debian; idempotent). Without it that test is skipped.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  ( $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get update -q && \
	    $$( [ "$$(id -u)" = 0 ] || echo sudo ) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver ) || \
	  echo "warning: chromium could not be installed; the browser test will be skipped"

lint: setup
	$(BIN)/ruff check src tests benchmarks

test-unit: setup
	$(PY) -m pytest tests/unit -q

test-integration: assets browser
	$(PY) -m pytest tests/integration -q

test: assets lint browser
	$(PY) -m pytest tests -q

# Mutants of the modules listed under [tool.mutmut] in pyproject.toml, one module at a time, niced,
# one worker (MUTATE="adcopilot.model.boxes*" picks modules; MUTATION_JOBS=2 on an idle machine).
# `$(BIN)/mutmut results` lists the survivors, `$(BIN)/mutmut show NAME` shows one.
MUTATE ?= adcopilot.model.compare* adcopilot.model.boxes* adcopilot.model.nano* adcopilot.line.cost_threshold* \
	adcopilot.eval.scoring* adcopilot.line.batch* adcopilot.full.pipeline*
MUTATION_JOBS ?= 1
mutation: setup
	set -f; for m in $(MUTATE); do \
	  OMP_NUM_THREADS=1 nice -n 15 $(BIN)/mutmut run --max-children $(MUTATION_JOBS) "$$m" || exit 1; \
	done
	$(BIN)/mutmut results

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache mutants
