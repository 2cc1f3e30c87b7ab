# Two entry points, each setting itself up on a fresh machine:
#   make bench [ARGS="--batch-sizes 1,16,64"]   run the experiments in benchmarks/
#   make test  [ARGS="-k options"]              run the plugin's test suite
# and CI's fast mode of the experiments, compared with its committed baseline:
#   make bench-fast                             (make bench-fast-baseline re-records it)
# and the scaling study of the README (repeats, an lr grid, time to accuracy):
#   make study
# and what a session costs outside training against the textbook script, then what
# measuring costs a run (make overhead ARGS=... MEASURING_ARGS=...), and what the installed
# plugin costs a session that does not use it, and the wheel as users install it:
#   make overhead
#   make startup
#   make wheel-check
# and the manual (Sphinx, warnings as errors; the reference is generated from the code)
# into docs/_build/html:
#   make docs
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# CI's fast mode: every experiment on 5,000 training samples for one epoch, with the
# thresholds relaxed by the rule in benchmarks/conftest.py. Its reports go to
# .ci-reports/, so the committed reports/ stay as the full run left them.
FAST_ARGS := --batchprof-train-subset 5000 --batchprof-epochs 1 --batchprof-no-co2 \
	--batchprof-report=.ci-reports
FAST_BASELINE := reports/baselines/ci-fast.json
FAST_FAIL_DROP := 2

# The README's scaling study: 784-1024-10 at batch 16 to 1,024, three seeds each, the
# learning rate tuned per batch size over a grid of four (the fewest steps to 97%
# validation accuracy wins; every seed and rate of a batch size train as one ensemble),
# each run stopped at 97% (at most 10 epochs), with the gradient noise scale and the fitted
# critical batch size. Its report goes to reports/scaling/.
STUDY_ARGS := --batch-sizes 16,32,64,128,256,512,1024 --batchprof-repeats 3 \
	--batchprof-lr-grid 3e-4,1e-3,3e-3,1e-2 \
	--batchprof-target-accuracy 0.97 --batchprof-epochs 10 --batchprof-noise-scale \
	--batchprof-report=$(CURDIR)/reports/scaling

.PHONY: bench bench-fast bench-fast-baseline study test lint clean overhead speed \
	speed-ensemble startup wheel-check docs

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

study: $(STAMP)
	$(PY) -m pytest "benchmarks/test_batch_size.py::test_one_hidden_layer_1024" $(STUDY_ARGS) \
		$(ARGS)

test: $(STAMP)
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest tests/ $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info .ci-reports .import_linter_cache \
		docs/_build

# A session's cost outside training, phase by phase, side by side with the posts' textbook
# script (benchmarks/session_overhead.py; ARGS="--pairs 5"), then, as a second step, what
# measuring costs a run against the bare engine (benchmarks/measurement_overhead.py;
# MEASURING_ARGS="--pairs 5").
overhead: $(STAMP)
	$(PY) benchmarks/session_overhead.py $(ARGS)
	$(PY) benchmarks/measurement_overhead.py $(MEASURING_ARGS)

speed: $(STAMP)
	$(PY) benchmarks/speed/compare_loops.py $(ARGS)

speed-ensemble: $(STAMP)
	$(PY) benchmarks/speed/compare_ensembles.py $(ARGS)

startup: $(STAMP)
	$(PY) benchmarks/startup.py $(ARGS)

wheel-check: $(STAMP)
	PY=$(CURDIR)/$(PY) bash .ci/wheel-check

# Not nitpicky (-n): the docstrings name private modules the manual does not document.
docs: $(STAMP)
	$(PY) -m sphinx -W --keep-going -b html docs docs/_build/html
