#!/usr/bin/env bash
# GPU smoke test (issues 14, 27), < 10 min on one CUDA GPU, no network. Non-zero exit on any error.
# The vLLM engine's checks run with .venv-vllm/bin/python (make vllm; VLLM_PYTHON=... for another; --no-vllm: without).
#   scripts/gpu/smoke.sh                 # on a CUDA machine
#   scripts/gpu/smoke.sh --device cpu    # dry mode: the same checks, small sizes, on a CPU
# Offline installs: pip install --no-index --find-links <wheel dir> -e . before running.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec timeout "${SMOKE_TIMEOUT_S:-600}" "$PY" scripts/gpu/smoke.py "$@"
