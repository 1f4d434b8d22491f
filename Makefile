# The README's two commands: `make demo` and `make test`. Each sets up .venv when missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA_DIR ?= data
PYTEST_ARGS ?=

.PHONY: demo test test-heavy test-fast venv clean-venv chromium

$(STAMP): pyproject.toml
	@command -v java >/dev/null || { echo "Java 17+ is needed for Spark (apt-get install openjdk-17-jre-headless)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "Installing rankflow and its pinned stack into $(VENV) (a few minutes the first time)..."
	@$(BIN)/python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored: it is neither" || true
	@set -o pipefail; $(BIN)/python -m pip install -q -e '.[test]' 2>&1 | grep -v "is ignored: it is neither" || { echo "pip install failed"; exit 1; }
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/rankflow demo --data-dir $(DATA_DIR)

# Headless Chromium renders Data Docs and the Airflow grid in tests (Debian package, installed once).
chromium:
	@bash scripts/ensure_chromium.sh

# All tests, slow ones included. pytest exits 5 when it collects nothing: make fails on it.
test: $(STAMP) chromium
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Tests that build many days through Spark and Feast (marked heavy): 10+ minutes on 2 cores.
test-heavy: $(STAMP)
	$(BIN)/python -m pytest -m heavy $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
