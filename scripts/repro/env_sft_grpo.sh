#!/usr/bin/env bash
# SFT warm start, then GRPO from its checkpoint, for one seed (docs/environments.md, "Results"):
#   scripts/repro/env_sft_grpo.sh calculator SEED   # +experiment=env_calculator_sft, then +experiment=calculator
#   scripts/repro/env_sft_grpo.sh rg SEED           # +experiment=env_rg_sft, then +experiment=env_rg_grpo
# Runs land in ${OUT:-outputs/env_runs}/<task>_s<SEED>/{sft,grpo}; a finished stage is skipped; of the SFT
# checkpoint only the policy is kept, and GRPO saves none (a run's metrics.jsonl holds the table's numbers).
# Extra arguments go to both rltrain calls (e.g. launch.threads_per_rank=2). RLTRAIN, PYTHON: the commands
# (default .venv's).
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/repro/lib.sh
task=${1:?usage: env_sft_grpo.sh calculator|rg SEED [overrides...]}
seed=${2:?usage: env_sft_grpo.sh calculator|rg SEED [overrides...]}
shift 2
RLTRAIN=${RLTRAIN:-.venv/bin/rltrain}
PYTHON=${PYTHON:-.venv/bin/python}
dir=${OUT:-outputs/env_runs}/${task}_s${seed}
mkdir -p "$dir"
sft=() grpo=()
case $task in
  calculator)
    # demonstrations from the training questions; another sample of them per seed (generated, never committed)
    "$PYTHON" -m rltrain.envs.demos --out "$dir/demos.jsonl" --n 48 --seed "$seed"
    sft=(+experiment=env_calculator_sft "data.path=$dir/demos.jsonl" "data.test_path=$dir/demos.jsonl")
    grpo=(+experiment=calculator) ;;
  rg) sft=(+experiment=env_rg_sft) grpo=(+experiment=env_rg_grpo) ;;
  *) echo "env_sft_grpo.sh: unknown task '$task' (calculator | rg)" >&2; exit 2 ;;
esac
finished "$dir/sft" || "$RLTRAIN" "${sft[@]}" seed="$seed" hydra.run.dir="$dir/sft" "$@"
ckpt=$(ls -d "$dir"/sft/checkpoints/step_*/policy | sort -V | tail -1)
rm -f "$(dirname "$ckpt")/trainer.pt"  # the optimizer state (1.6 GB): GRPO loads the policy only
# GRPO's own final checkpoint is not needed for the table (checkpoint.save_final=false: 2.2 GB a run)
finished "$dir/grpo" || "$RLTRAIN" "${grpo[@]}" model=hf model.path="$ckpt" seed="$seed" \
  checkpoint.save_final=false hydra.run.dir="$dir/grpo" "$@"
