# Two commands set up everything on a fresh machine: `make repro` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
# Re-install only when the dependency declarations change, so a second `make setup` takes seconds.
STAMP  := $(VENV)/.bplab-installed

.PHONY: setup repro test lint bench soak clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check \
		--constraint requirements.lock --editable '.[test]'
	@touch $(STAMP)

# DVC stages call `python`; putting the venv first on PATH makes that the venv's interpreter.
repro: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

# Test files run in parallel (one file per worker, so module fixtures run once): most of the suite
# waits on stage processes starting up, and two workers use a 2-core machine's second core.
test: setup lint
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -n auto --maxprocesses 4 --dist loadfile $(PYTEST_ARGS)

# Full-size benchmark (about 10 minutes): writes bench/results.md and bench/results.json.
bench: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python bench/run.py

# Full fault campaign (about 10 minutes): writes bench/soak-results.md and bench/soak-results.json.
soak: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python bench/soak.py

lint: setup
	$(BIN)/ruff check src stages tests bench

clean-venv:
	rm -rf $(VENV)
