# Two commands: `make run` (the main job on the embedded defaults) and `make test` (lint, types
# and the whole suite, with Debian's chromium for the browser test; what CI runs). Both create
# or reuse .venv and install the pinned dependency set from constraints.txt. `make test-fast` is
# the everyday tier: lint, types and the unit tests, without the flow runs on real servers.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run lint chromium test test-fast bench

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

# The browser test drives Debian's chromium (Playwright's own browser download cannot work here):
# installed when missing and we are root with apt-get; otherwise that test is skipped, saying why.
CHROMIUM := /usr/bin/chromium
chromium:
	@if [ -x $(CHROMIUM) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium; } \
		|| echo "apt-get could not install chromium: the browser test will be skipped"; \
	else echo "no $(CHROMIUM), and apt-get as root is not available to install it: the browser test will be skipped"; fi

test: lint chromium
	$(BIN)/python -m pytest -q -rs -n auto --dist loadfile --durations=25

test-fast: lint
	$(BIN)/python -m pytest -q -n auto --dist loadfile -m "not flow and not system"

bench: install
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[bench]'
	$(BIN)/python bench/engine.py
