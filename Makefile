# Two entry points, each setting itself up on a fresh machine:
#   make bench [ARGS="--batch-sizes 1,16,64"]   run the experiments in benchmarks/
#   make test  [ARGS="-k options"]              run the plugin's test suite
# and CI's fast mode of the experiments, compared with its committed baseline:
#   make bench-fast                             (make bench-fast-baseline re-records it)
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# CI's fast mode: every experiment on 5,000 training samples for one epoch, with the
# thresholds relaxed by the rule in benchmarks/conftest.py. Its reports go to
# .ci-reports/, so the committed reports/ stay as the full run left them.
FAST_ARGS := --train-subset 5000 --epochs 1 --no-co2 --batchprof-report=.ci-reports
FAST_BASELINE := reports/baselines/ci-fast.json
FAST_FAIL_DROP := 2

.PHONY: bench bench-fast bench-fast-baseline test lint clean overhead speed

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

bench: $(STAMP)
	$(PY) -m pytest benchmarks/ $(ARGS)

bench-fast: $(STAMP)
	$(PY) -m pytest benchmarks/ $(FAST_ARGS) --batchprof-compare=$(CURDIR)/$(FAST_BASELINE) \
		--batchprof-fail-drop=$(FAST_FAIL_DROP) $(ARGS)

bench-fast-baseline: $(STAMP)
	$(PY) -m pytest benchmarks/ $(FAST_ARGS) --batchprof-save=ci-fast $(ARGS)
	cp .ci-reports/baselines/ci-fast.json $(FAST_BASELINE)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest tests/ $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info .ci-reports

overhead: $(STAMP)
	$(PY) benchmarks/measurement_overhead.py $(ARGS)

speed: $(STAMP)
	$(PY) benchmarks/speed/compare_loops.py $(ARGS)
