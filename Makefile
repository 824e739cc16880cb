# Two commands: `make run` (the main job on the embedded defaults) and `make test` (lint, types
# and the whole suite; what CI runs). Both create or reuse .venv and install the pinned
# dependency set from constraints.txt. `make test-fast` is the everyday tier: lint, types and
# the unit tests, without the flow runs on real servers.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run lint test test-fast bench

# Named data sets: $QLLM_DATA_DIR when set, else ../shared/data when present, else downloaded.
ifeq ($(QLLM_DATA_DIR),)
ifneq ($(wildcard ../shared/data),)
export QLLM_DATA_DIR := $(abspath ../shared/data)
endif
endif

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/qllm run distill

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest -q -n auto --dist loadfile

test-fast: lint
	$(BIN)/python -m pytest -q -n auto --dist loadfile -m "not flow and not system"

bench: install
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[bench]'
	$(BIN)/python bench/engine.py
