# `make help` lists the targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ARGS ?=

.DEFAULT_GOAL := help

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

.PHONY: help install run test test-all clean

help: ## show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-14s %s\n", $$1, $$2}'

install: $(BIN)/.installed ## create .venv and install the pinned dependencies

run: install ## train the default job (pass overrides with ARGS="env=hopper optimizer.delta=0.02")
	$(BIN)/python launch.py $(ARGS)

test: install ## run the test suite (under 5 minutes on 2 cores)
	$(BIN)/python -m pytest -m "not slow"

test-all: install ## run every test, the slow end-to-end ones too
	$(BIN)/python -m pytest

clean: ## remove run outputs (keeps .venv)
	rm -rf outputs/runs outputs/sweeps
