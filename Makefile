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

.PHONY: setup assets browser demo test test-unit test-integration lint bench clean

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

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
