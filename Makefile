# apiscope: `make demo` to see it work, `make test` to check it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_ARGS ?=

.PHONY: install demo test lint typecheck pytest bench soak accuracy system-deps target-envs clean \
	screenshots

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

# The planted half of the accuracy corpus is the scorecard (`make accuracy`), not a gate.
pytest: $(VENV)/.installed-test target-envs
	$(BIN)/pytest -q -rs -m "not accuracy"

test: system-deps lint typecheck pytest

bench: system-deps $(VENV)/.installed-bench
	$(BIN)/python -m benchmarks.run

# An hour attached at the defaults under a steady load (SOAK_MINUTES shortens it); not in `test`.
soak: system-deps $(VENV)/.installed-bench
	$(BIN)/python -m benchmarks.run --only soak

# The accuracy corpus: realistic apps run for real under apiscope; rewrites docs/accuracy.md.
accuracy: system-deps $(VENV)/.installed-test
	$(BIN)/python -m tests.corpus.scorecard --output docs/accuracy.md

# The README's dashboard screenshots, from a real demo session replayed in headless Chromium;
# the session's report is kept next to it, to check the pictures' figures against. The demo
# runs from a copy of the committed tree, so the file paths in the pictures are not a clone's.
SHOTS ?= /tmp/apiscope-screenshots
screenshots: system-deps $(VENV)/.installed-test
	rm -rf $(SHOTS) && mkdir -p $(SHOTS)/apiscope
	git archive HEAD | tar -x -C $(SHOTS)/apiscope
	cd $(SHOTS) && PYTHONPATH=$(SHOTS)/apiscope/src $(CURDIR)/$(BIN)/apiscope demo \
		--duration 25 --no-browser --no-dashboard --session demo.sqlite --report report.json
	$(BIN)/apiscope report $(SHOTS)/demo.sqlite > $(SHOTS)/report.txt
	$(BIN)/python -m tests.dashboard.screenshots docs $(SHOTS)/demo.sqlite

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
