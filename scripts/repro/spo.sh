#!/usr/bin/env bash
# Issue 17's experiments: does SPO beat GRPO at this scale? SmolLM2-135M, data=arith, 200 held-out
# questions, seeds 0 1 2 (SEEDS=...), at difficulty 1 (the default task; the untrained model samples
# ~6-11% right) and DIFF2 (default 0: addition up to 20, ~26% right, 200 training questions).
# Each run goes to outputs/spo/<cell>_d<difficulty>_s<seed>; a finished run is skipped and an
# interrupted one resumes from its last checkpoint, so the whole script can be started again after
# a crash. The untrained model's evaluation is computed once per difficulty (eval cache). Runs go
# seed by seed (every cell of seed 0 first), so a partial sweep gives whole seeds.
#   E1  same recipe, equal steps (STEPS, default 10): β = 0, 8 prompts per step;
#       grpo 8×8, spo_chain 8×8, spo_tree branching=[4,2]
#   E2  SPO-chain 2×2: advantage whitening batch|none × probability mask on|off
#   E3  equal wall time (BUDGET_S of training steps, default 300): grpo, chain with 2 epochs ×
#       2 minibatches, tree with 8 prompts per step
# Then: python scripts/repro/spo_table.py outputs/spo (mean and spread per cell) and rltrain-report.
# Usage: scripts/repro/spo.sh [E1|E2|E3|CELL ...]   (default: all three; a CELL such as
# E2_chain_none_nomask runs that cell alone)
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/repro/lib.sh
RL=${RL:-.venv/bin/rltrain}
OUT=${OUT:-outputs/spo}
SEEDS=${SEEDS:-"0 1 2"}
DIFFS=${DIFFS:-"1 ${DIFF2:-0}"}
STEPS=${STEPS:-10}
BUDGET_S=${BUDGET_S:-300}
EXPS=("$@")
[ ${#EXPS[@]} -gt 0 ] || EXPS=(E1 E2 E3)

# the recipe and dtype the tables were measured with
common=(train.prompts_per_step=8 train.lr_schedule=constant model.dtype=fp32 log.console=false resume=auto)
declare -A CELLS=(
  [E1_grpo]="algo=grpo train.samples_per_prompt=8 train.steps=$STEPS"
  [E1_chain]="algo=spo_chain algo.kl_coef=0 train.samples_per_prompt=8 train.steps=$STEPS"
  [E1_tree]="algo=spo_tree algo.kl_coef=0 algo.branching=[4,2] train.steps=$STEPS"
  [E2_chain_batch_mask]="algo=spo_chain algo.kl_coef=0 algo.adv_whiten=batch algo.prob_mask=true train.steps=$STEPS"
  [E2_chain_batch_nomask]="algo=spo_chain algo.kl_coef=0 algo.adv_whiten=batch algo.prob_mask=false train.steps=$STEPS"
  [E2_chain_none_mask]="algo=spo_chain algo.kl_coef=0 algo.adv_whiten=none algo.prob_mask=true train.steps=$STEPS"
  [E2_chain_none_nomask]="algo=spo_chain algo.kl_coef=0 algo.adv_whiten=none algo.prob_mask=false train.steps=$STEPS"
  [E3_grpo]="algo=grpo train.samples_per_prompt=8 train.steps=1000 train.time_budget_s=$BUDGET_S"
  [E3_chain]="algo=spo_chain algo.kl_coef=0 train.epochs=2 train.minibatches_per_step=2 train.steps=1000 train.time_budget_s=$BUDGET_S"
  [E3_tree]="algo=spo_tree algo.kl_coef=0 algo.branching=[4,2] train.steps=1000 train.time_budget_s=$BUDGET_S"
)
# A cell whose settings are another's defaults reuses that run (a symlink) once it is finished:
# E2's batch × mask cell is E1's chain (adv_whiten=batch and prob_mask=true are the chain's defaults).
declare -A SAME_AS=([E2_chain_batch_mask]=E1_chain)
for s in $SEEDS; do
  for d in $DIFFS; do
    extra=()
    [ "$d" = 0 ] && extra=(data.n_train=200)  # level 0 has 400 questions; 200 are held out
    for exp in "${EXPS[@]}"; do
      for cell in $(printf '%s\n' "${!CELLS[@]}" | grep -E "^${exp}(_|\$)" | sort); do
        dir="$OUT/${cell}_d${d}_s${s}"
        if finished "$dir"; then echo "== $dir: finished, skipped"; continue; fi
        same=${SAME_AS[$cell]:-}
        if [ -n "$same" ] && [ ! -e "$dir" ] && finished "$OUT/${same}_d${d}_s${s}"; then
          ln -s "${same}_d${d}_s${s}" "$dir"; echo "== $dir: the same run as ${same}_d${d}_s${s}, linked"; continue
        fi
        # shellcheck disable=SC2086  # a cell's overrides are words
        echo "== $dir: ${CELLS[$cell]} data.difficulty=$d seed=$s ${extra[*]}"
        $RL ${CELLS[$cell]} "data.difficulty=$d" "seed=$s" "${extra[@]}" "${common[@]}" "hydra.run.dir=$dir"
      done
    done
  done
done
