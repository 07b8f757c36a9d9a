#!/usr/bin/env bash
# The default-recipe search of docs/results.md ("Eight seeds, the recipe search"): the embedded default
# with a candidate's overrides, one run per dtype and seed, in outputs/seeds/<recipe>/<dtype>_s<seed>.
# A finished run is skipped, an interrupted one resumes. Threads are pinned to 2 so that every row
# computes the same way whatever else shares the machine (wait policy passive: it does not change
# the numbers, only how threads wait).
# Usage: RECIPE=name scripts/repro/seed_search.sh "override ..." fp32_s0 bf16_s0 ...
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/repro/lib.sh
RL=${RL:-.venv/bin/rltrain}
OUT=${OUT:-outputs/seeds/${RECIPE:?name the recipe: RECIPE=...}}
read -r -a EXTRA <<< "$1"; shift
for name in "$@"; do
  dir="$OUT/$name"
  if finished "$dir"; then
    echo "== $RECIPE $name: finished, skipped"; continue
  fi
  echo "== $RECIPE $name ($(date -u +%H:%M:%S), load $(cut -d' ' -f1 /proc/loadavg))"
  OMP_WAIT_POLICY=PASSIVE $RL "model.dtype=${name%_s*}" "seed=${name#*_s}" launch.threads_per_rank=2 \
    "${EXTRA[@]}" resume=auto log.console=false "hydra.run.dir=$dir"
done
