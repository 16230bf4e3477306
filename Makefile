# Quick start: `make demo` (set up + a few minutes of RACE on SMAX 3m, compared with a random policy), `make test`.
# Maintenance: `make lint` (ruff + mypy), `make format` (ruff format + import sorting), `make docs` (the site,
# strict), `make docs-serve` (the site at http://127.0.0.1:8000 while you edit).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_OUT ?= runs/demo
# Quiet the banners that mkdocs-material and a plugin print about mkdocs 2 (they say nothing about this site).
export NO_MKDOCS_2_WARNING := 1
export DISABLE_MKDOCS_2_WARNING := true

.PHONY: setup demo test lint format docs docs-serve bench-learning clean

$(BIN)/racemarl: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[all,docs,lint]"
	@touch $@

setup: $(BIN)/racemarl

# runs/demo is the demo's own folder and is replaced on every `make demo`; a DEMO_OUT of your own must not exist yet
# (examples/demo.py refuses a folder that is there: nothing of yours is deleted).
demo: setup
	@if [ "$(DEMO_OUT)" = runs/demo ]; then rm -rf runs/demo; fi
	$(BIN)/python examples/demo.py --config configs/demo.yaml --out $(DEMO_OUT)
	@echo "Look at it with: tensorboard --logdir $(DEMO_OUT)/tb   or   $(BIN)/racemarl info $(DEMO_OUT)"

test: setup
	$(BIN)/python -m pytest tests

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: setup
	$(BIN)/ruff check --fix --select I .
	$(BIN)/ruff format .

docs: setup
	$(BIN)/mkdocs build --strict

docs-serve: setup
	$(BIN)/mkdocs serve

bench-learning: setup
	$(BIN)/python benchmarks/learning.py

# The built site, tool caches and the demo's folder; your runs under runs/ stay.
clean:
	rm -rf runs/demo site .pytest_cache .ruff_cache .mypy_cache
