# Quick start: `make demo` (set up + a few minutes of RACE on SMAX 3m, compared with a random policy), `make test`.
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
	$(BIN)/python examples/demo.py --config configs/demo.yaml --out $(DEMO_OUT)
	@echo "Look at it with: tensorboard --logdir $(DEMO_OUT)/tb   or   $(BIN)/racemarl info $(DEMO_OUT)"

test: setup
	$(BIN)/python -m pytest tests

bench-learning: setup
	$(BIN)/python benchmarks/learning.py

clean:
	rm -rf runs .pytest_cache
