#!/usr/bin/env bash
# The menu table of docs/results.md ("The policy-optimisation menu"): each menu recipe (conf/experiment/menu_*.yaml) on the embedded
# default task, seed 0, one after another in outputs/menu/<name>; a finished run is skipped and an
# interrupted one resumes from its last checkpoint. The untrained model's evaluation is computed by
# the first run and reused by the others from the eval cache (same weights, questions, settings).
# The on-policy-distillation row distils the trained `grpo` row into the untrained student.
# Then: python scripts/repro/table.py outputs/menu --menu  (the markdown table).
# Usage: scripts/repro/menu.sh [name ...]   (default: all)
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/repro/lib.sh
RL=${RL:-.venv/bin/rltrain}
OUT=${OUT:-outputs/menu}
ORDER=(grpo gspo cispo sapo rloo reinforce_pp reinforce_pp_baseline tis icepop gdpo opd)
[ $# -gt 0 ] && ORDER=("$@")

for name in "${ORDER[@]}"; do
  dir="$OUT/$name"
  if finished "$dir"; then
    echo "== $name: finished, skipped"; continue
  fi
  extra=()
  [ "$name" = opd ] && extra=("algo.teacher_path=$OUT/grpo")
  echo "== $name: +experiment=menu_$name ${extra[*]}"
  $RL "+experiment=menu_$name" "${extra[@]}" seed=0 resume=auto log.console=false "hydra.run.dir=$dir"
done
