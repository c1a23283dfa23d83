# Quick start: `make demo` (set up + run the main job) and `make test` (set up + lint + docs + tests).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-repeat lint setup docs clean

setup: $(STAMP)

# torch first, pinned: the CPU wheel on disk; a looser pin would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[all]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/egnn demo

# the documentation site, offline, warnings as errors (every reference must resolve): docs/_build/html
docs: $(STAMP)
	$(PY) -m sphinx -b html -W --keep-going -n -q docs docs/_build/html
	@echo "docs: docs/_build/html/index.html"

test: $(STAMP)
	$(PY) -m ruff check src tests benchmarks docs
	$(MAKE) --no-print-directory docs
	$(PY) -m pytest -q

# the tests that start, kill or wait on processes, N times in a row at 1 and 2 threads (LOAD=1: other core busy)
test-repeat: $(STAMP)
	PYTHON=$(PY) bash tests/repeat_timing.sh $(or $(N),30) $(if $(LOAD),--load)

clean:
	rm -rf $(VENV) build src/*.egg-info docs/_build docs/_generated
