#!/usr/bin/env bash
# The "Precision" tables of docs/results.md: the embedded default (`rltrain`: GRPO, SmolLM2-135M-Instruct,
# two-digit addition, 6 steps, 200 held-out questions) in fp32 and in bf16 (fp32 masters,
# stochastic rounding into the bf16 compute copy), seeds 0 and 1, in outputs/precision/<dtype>_s<seed>.
# A finished run is skipped, an interrupted one resumes. Usage: scripts/repro/precision.sh [dtype_sN ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/repro/lib.sh
RL=${RL:-.venv/bin/rltrain}
OUT=${OUT:-outputs/precision}
ORDER=(fp32_s0 bf16_s0 fp32_s1 bf16_s1)
[ $# -gt 0 ] && ORDER=("$@")
for name in "${ORDER[@]}"; do
  dir="$OUT/$name"
  if finished "$dir"; then
    echo "== $name: finished, skipped"; continue
  fi
  echo "== $name"
  $RL "model.dtype=${name%_s*}" "seed=${name#*_s}" resume=auto log.console=false "hydra.run.dir=$dir"
done
