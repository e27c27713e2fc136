# Two commands set up everything on a fresh machine: `make repro` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
# Re-install only when the dependency declarations change, so a second `make setup` takes seconds.
STAMP  := $(VENV)/.bplab-installed

.PHONY: setup repro test docs lint browser postgres bench soak clean-venv

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
# waits on stage processes starting up, and two workers use a 2-core machine's second core. Files
# start in the order tests/conftest.py gives (the longest first), not xdist's by number of tests.
test: setup lint browser postgres
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -n auto --maxprocesses 4 --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

# The manual (docs/, mkdocs.yml) as a static site in site/. --strict: a broken link, page or anchor
# fails the build (mkdocs.yml's validation makes each a warning). The test suite runs the same
# build (tests/integration/test_docs.py), so `make test` needs no `docs` prerequisite.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# Full-size benchmark (about 35 minutes, 10 of them `make test` on a clean clone of the committed
# code): writes bench/results.{md,json}; for the cost of MLflow's system metrics on the MNIST
# stage, bench/system-metrics.{md,json}; and for a shared tracking server under load (PostgreSQL
# and sqlite behind `mlflow server`), bench/tracking-load.{md,json}; for what early stopping on the
# test split did to test scores, bench/selection-bias.{md,json} (after `make repro`: it reads data/processed/);
# for one sweep on one machine against two clones on PostgreSQL and S3, bench/team-sweep.{md,json}.
bench: setup postgres
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python bench/run.py
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python bench/system_metrics.py
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python bench/tracking_load.py
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python bench/selection_bias.py
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python bench/team_sweep.py

# Full fault campaign (about 10 minutes): writes bench/soak-results.md and bench/soak-results.json.
soak: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python bench/soak.py

# $(call debian_package,PACKAGE,CHECK,WHAT): install Debian's PACKAGE unless the shell command
# CHECK succeeds, when this user may (root, or sudo without a password); otherwise say that WHAT
# will skip (and fail under CI=true).
define debian_package
	@{ $(2); } >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then sudo=; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; else sudo=no; fi; \
	  if [ "$$sudo" != no ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's $(1) for $(3)"; log=$$(mktemp); \
	    if { $$sudo apt-get update -qq && \
	         DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq $(1); } >$$log 2>&1; \
	    then rm -f $$log; else cat $$log; echo "could not install $(1): $(3) will skip"; fi; \
	  else echo "no $(1) and no way to install it here: $(3) will skip"; fi; }
endef

# Headless Chromium for the MLflow UI tests (tests/e2e/test_ui.py) and bench/screenshots.py (about 30 s
# to install); Playwright's own browser download is never used.
browser:
	$(call debian_package,chromium,command -v chromium,the MLflow UI tests)

# PostgreSQL's server programs for the shared-tracking-server tests and bench
# (tests/e2e/test_shared_server.py, bench/tracking_load.py; about 30 s to install). The tests run
# their own cluster in a temporary folder, not the package's.
postgres:
	$(call debian_package,postgresql,ls /usr/lib/postgresql/*/bin/postgres || command -v postgres,the PostgreSQL tests)

lint: setup
	$(BIN)/ruff check src stages tests bench

clean-venv:
	rm -rf $(VENV)
