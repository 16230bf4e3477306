# Quick start: `make demo` (set up + short RACE training), `make test` (set up + tests).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_OUT ?= runs/demo

.PHONY: setup demo test bench-learning clean

$(BIN)/racemarl: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[all]"
	@touch $@

setup: $(BIN)/racemarl

demo: setup
	rm -rf $(DEMO_OUT)
	$(BIN)/racemarl train --config configs/demo.yaml --out $(DEMO_OUT)
	@echo "Results in $(DEMO_OUT): metrics.csv, summary.json, config.yaml, tb/ (tensorboard --logdir $(DEMO_OUT)/tb), checkpoints/"

test: setup
	$(BIN)/python -m pytest tests

bench-learning: setup
	$(BIN)/python benchmarks/learning.py

clean:
	rm -rf runs .pytest_cache
