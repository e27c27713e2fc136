# Two commands set up everything on a fresh machine: `make repro` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
# Re-install only when the dependency declarations change, so a second `make setup` takes seconds.
STAMP  := $(VENV)/.bplab-installed

.PHONY: setup repro test lint browser postgres bench soak clean-venv

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
test: setup lint browser postgres
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -n auto --maxprocesses 4 --dist loadfile $(PYTEST_ARGS)

# Full-size benchmark (about 35 minutes, 10 of them `make test` on a clean clone of the committed
# code): writes bench/results.{md,json}; for the cost of MLflow's system metrics on the MNIST
# stage, bench/system-metrics.{md,json}; and for a shared tracking server under load (PostgreSQL
# and sqlite behind `mlflow server`), bench/tracking-load.{md,json}.
bench: setup postgres
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python bench/run.py
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python bench/system_metrics.py
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python bench/tracking_load.py

# Full fault campaign (about 10 minutes): writes bench/soak-results.md and bench/soak-results.json.
soak: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python bench/soak.py

# Headless Chromium for the MLflow UI tests (tests/test_ui.py) and bench/screenshots.py: Debian's
# `chromium`, installed when missing and this user may (root, or sudo without a password; about
# 30 s). Without it the UI tests skip, and fail under CI=true.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then sudo=; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; else sudo=no; fi; \
	  if [ "$$sudo" != no ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium for the MLflow UI tests"; log=$$(mktemp); \
	    if { $$sudo apt-get update -qq && \
	         DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq chromium; } >$$log 2>&1; \
	    then rm -f $$log; else cat $$log; echo "could not install chromium: the MLflow UI tests will skip"; fi; \
	  else echo "no chromium and no way to install it here: the MLflow UI tests will skip"; fi; }

# PostgreSQL for the shared-tracking-server tests and bench (tests/test_shared_server.py,
# bench/tracking_load.py): Debian's `postgresql`, installed when its server programs are missing
# and this user may (about 30 s). The tests run their own cluster in a temporary folder; without
# it they skip, and fail under CI=true.
postgres:
	@ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || command -v postgres >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then sudo=; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; else sudo=no; fi; \
	  if [ "$$sudo" != no ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's postgresql for the shared tracking server tests"; log=$$(mktemp); \
	    if { $$sudo apt-get update -qq && \
	         DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq postgresql; } >$$log 2>&1; \
	    then rm -f $$log; else cat $$log; echo "could not install postgresql: the PostgreSQL tests will skip"; fi; \
	  else echo "no PostgreSQL and no way to install it here: the PostgreSQL tests will skip"; fi; }

lint: setup
	$(BIN)/ruff check src stages tests bench

clean-venv:
	rm -rf $(VENV)
