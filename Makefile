# apiscope: `make demo` to see it work, `make test` to check it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_ARGS ?=

.PHONY: install demo test lint typecheck pytest bench accuracy system-deps target-envs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dashboard,demo]'
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[dashboard,demo,test]'
	touch $@

$(VENV)/.installed-bench: pyproject.toml $(VENV)/.installed-test
	$(BIN)/python -m pip install --quiet -e '.[dashboard,demo,test,bench]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/apiscope demo $(DEMO_ARGS)

# System packages the tests drive for real (Chromium, gdb, Prometheus, wrk): installed with
# apt-get when running as root and missing; otherwise the script says what is missing.
system-deps:
	bash scripts/install-system-deps.sh

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests sample_app benchmarks

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy

# One small environment per CPython 3.9-3.13 found here (uvicorn + Starlette), under
# $(VENV)/targets/: the servers the version matrix attaches to. Built once, then reused.
target-envs: $(VENV)/.installed-test
	$(BIN)/python -m tests.pythons.targets

pytest: $(VENV)/.installed-test target-envs
	$(BIN)/pytest -q -rs

test: system-deps lint typecheck pytest

bench: system-deps $(VENV)/.installed-bench
	$(BIN)/python -m benchmarks.run

# The accuracy corpus: realistic apps run for real under apiscope; rewrites docs/accuracy.md.
accuracy: system-deps $(VENV)/.installed-test
	$(BIN)/python -m tests.corpus.scorecard --output docs/accuracy.md

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
