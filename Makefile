# One command per task; CI calls `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TINY := models/tiny-llama
CONFIG ?= config.example.toml

.PHONY: setup lock browser lb run test lint bench tiny clean screenshots

CONSTRAINTS := .ci/constraints.txt

$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch is pinned to the CPU wheel so pip never pulls a multi-GB CUDA build; GPU users install their own.
	$(BIN)/pip install -q torch==2.13.0
	# Every other package at the version the suite last passed with (a new upstream release cannot
	# turn CI red overnight); pyproject.toml keeps the ranges a pip user of the package gets.
	$(BIN)/pip install -q -c $(CONSTRAINTS) -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# Write the venv's versions into the constraints (after upgrading it and a green `make test`).
lock: setup
	{ sed -n '1,2p' $(CONSTRAINTS); $(BIN)/pip list --format=freeze --exclude-editable 2>/dev/null | \
		grep -v -E '^(llmserve|torch|pip|setuptools|wheel)=='; } > $(CONSTRAINTS).new && mv $(CONSTRAINTS).new $(CONSTRAINTS)

# Headless Chromium and its driver for the browser UI tests (Debian packages; needs root).
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; fi

# HAProxy and nginx for the load-balancer tests in tests/deploy/ (Debian's packages; needs root).
lb:
	@if ! command -v haproxy >/dev/null || ! command -v nginx >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy nginx-light; fi

$(TINY)/config.json: | $(STAMP)
	$(BIN)/llmserve tiny-model $(TINY) --seed 0

tiny: $(TINY)/config.json

run: setup tiny
	$(BIN)/llmserve run $(CONFIG)

test: setup browser lb
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: setup
	$(BIN)/ruff check llmserve tests benchmarks
	$(BIN)/mypy llmserve

bench: setup tiny
	$(BIN)/python benchmarks/cpu_concurrency.py --model-path $(TINY)

clean:
	rm -rf $(VENV) models

# The browser UI's screenshots in docs/ (ui-chat.png, ui-arena.png), taken by its tests.
screenshots: setup browser
	LLMSERVE_SCREENSHOT_DIR=$(CURDIR)/docs $(BIN)/python -m pytest -q -p no:cacheprovider tests/ui/test_browser.py
