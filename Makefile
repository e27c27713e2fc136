# Two commands set up everything on a fresh machine: `make repro` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
# Re-install only when the dependency declarations change, so a second `make setup` takes seconds.
STAMP  := $(VENV)/.bplab-installed

.PHONY: setup repro test lint bench clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check \
		--constraint requirements.lock --editable '.[test]'
	@touch $(STAMP)

# DVC stages call `python`; putting the venv first on PATH makes that the venv's interpreter.
repro: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

test: setup lint
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest $(PYTEST_ARGS)

# Full-size benchmark (about 10 minutes): writes bench/results.md and bench/results.json.
bench: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python bench/run.py

lint: setup
	$(BIN)/ruff check src stages tests bench

clean-venv:
	rm -rf $(VENV)
