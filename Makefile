# adcopilot: two commands on a fresh machine.
#   make demo   -> virtual environment, package, offline assets, then a real ELPV inspection
#   make test   -> the same setup, then lint and the whole test suite (unit + integration)
#   make mutation -> mutation testing of the core modules (slow: about two hours on 2 shared cores; not part of test)
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
# one worker (MUTATION_JOBS=2 on an idle machine). Each MUTATE entry is one mutmut run: a module, or a
# comma-separated list of its functions (mutmut's names: x_func, x?Class?method; * and ? as in fnmatch),
# e.g. make mutation MUTATE="adcopilot.model.boxes*". Where a module is given by functions, the rest of
# it is left out to keep a run within minutes on a shared machine (benchmarks/RESULTS.md lists what each covers).
# `$(BIN)/mutmut results` lists the survivors, `$(BIN)/mutmut show NAME` shows one.
M_CAL := adcopilot.line.labelled_calibration
M_SCORE := adcopilot.eval.scoring
M_FULL := adcopilot.full.pipeline
M_NANO := adcopilot.model.nano
M_BATCH := adcopilot.line.batch
MUTATE ?= adcopilot.model.compare* adcopilot.model.boxes* adcopilot.line.cost_threshold* \
	$(M_CAL).x_labelled_items*,$(M_CAL).x_score_items*,$(M_CAL).x_check_settings*,$(M_CAL).x_choose_from_records*,$(M_CAL).x_calibration_record*,$(M_CAL).x_save* \
	adcopilot.model.box_text* \
	$(M_FULL).x_read_verdict*,$(M_FULL).x_option_letter*,$(M_FULL).x_parse_labelled_boxes*,$(M_FULL).x_anomaly_question*,$(M_FULL).x_comparison_preamble*,$(M_FULL).x?FullCopilot?answer_choice*,$(M_FULL).x?FullDetector* \
	$(M_SCORE).x_parse_official*,$(M_SCORE).x_parse_strict*,$(M_SCORE).x__contains*,$(M_SCORE).x__prediction*,$(M_SCORE).x_score*,$(M_SCORE).x__mean* \
	$(M_BATCH).x_outcome*,$(M_BATCH).x__asset_name*,$(M_BATCH).x__check_manifest*,$(M_BATCH).x_shard_suffix*,$(M_BATCH).x_lot_id*,$(M_BATCH).x__digest* \
	$(M_NANO).x_pooled_score*,$(M_NANO).x?NanoDetector?weight_for*,$(M_NANO).x?ReferenceInputs?concat*,$(M_NANO).x?NanoComparisonModel?compare_with*,$(M_NANO).x_load_nano_detector*
MUTATION_JOBS ?= 1
mutation: setup
	set -f; for m in $(MUTATE); do \
	  OMP_NUM_THREADS=1 nice -n 15 $(BIN)/mutmut run --max-children $(MUTATION_JOBS) $$(echo "$$m" | tr ',' ' ') || exit 1; \
	done
	$(BIN)/mutmut results

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache mutants
