# Two entry points, each setting itself up on a fresh machine:
#   make bench [ARGS="--batch-sizes 1,16,64"]   run the experiments in benchmarks/
#   make test  [ARGS="-k options"]              run the plugin's test suite
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: bench test lint clean overhead speed

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

bench: $(STAMP)
	$(PY) -m pytest benchmarks/ $(ARGS)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest tests/ $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info

overhead: $(STAMP)
	$(PY) benchmarks/measurement_overhead.py $(ARGS)

speed: $(STAMP)
	$(PY) benchmarks/speed/compare_loops.py $(ARGS)
