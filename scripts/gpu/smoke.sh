#!/usr/bin/env bash
# GPU smoke test (issue 14), < 8 min on one CUDA GPU, no network. Non-zero exit on any error.
#   scripts/gpu/smoke.sh                 # on a CUDA machine
#   scripts/gpu/smoke.sh --device cpu    # dry mode: the same checks, small sizes, on a CPU
# Offline installs: pip install --no-index --find-links <wheel dir> -e . before running.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec timeout "${SMOKE_TIMEOUT_S:-480}" "$PY" scripts/gpu/smoke.py "$@"
