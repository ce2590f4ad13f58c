#!/usr/bin/env bash
# The runs of the replicated MovieLens study (preset `study-replicated`, studies/movielens-replicated/), in the order
# they are run, into a scratch folder outside the repository (default /work/replicated). From the repository root:
#
#     nohup setsid bash studies/scripts/replicated_queue.sh [SCRATCH] >> replicated-queue.log 2>&1 &
#
# Every step is a `trl-sdpo experiment` call, so the queue can be cut at any moment and run again: runs already landed
# in the study folder are copied into the scratch folder first and skipped, a run cut short resumes from its last
# Trainer checkpoint (every 8 preference steps, every 16 SFT steps), and each run JSON records its sittings. A run
# lands by its JSON being copied into studies/movielens-replicated/<split>/<method>/ (this script does it after each
# call; committing is left to whoever runs it). Checkpoints live on the machine's disk only: on a fresh machine an SFT
# model is trained again from the same seed, rows and order, and compared step by step with the landed `sft` run.
set -euo pipefail
cd "$(dirname "$0")/../.."
SCRATCH=${1:-/work/replicated}
LANDED=studies/movielens-replicated

sync_landed() {  # landed runs into the scratch folder (the runner skips them), new scratch runs into the study folder
  mkdir -p "$SCRATCH"
  (cd "$LANDED" && find . -path ./checkpoints -prune -o -name 'seed*.json' -print) | while read -r f; do
    [ -e "$SCRATCH/$f" ] || { mkdir -p "$(dirname "$SCRATCH/$f")"; cp "$LANDED/$f" "$SCRATCH/$f"; }
  done
  (cd "$SCRATCH" && find . -path ./checkpoints -prune -o -name 'seed*.json' -print) | while read -r f; do
    [ -e "$LANDED/$f" ] || { mkdir -p "$(dirname "$LANDED/$f")"; cp "$SCRATCH/$f" "$LANDED/$f"; echo "landed $f"; }
  done
}

experiment() {  # experiment SPLIT SEEDS METHODS
  echo "=== $(date -u +%FT%TZ) $1 seeds $2 methods $3"
  HF_HUB_OFFLINE=1 trl-sdpo experiment --config examples/configs/movielens.yaml --preset study-replicated \
    --output_dir "$SCRATCH" --split "$1" --seeds "$2" --methods "$3"
  sync_landed
}

sync_landed
# 1. The learning rates on valid (seed 0; the first call trains seed 0's SFT model, the `study` preset's fp32 one):
#    the preset's grid runs not landed yet, in the YAML's order
for method in $(python studies/scripts/replicated_choice.py --scratch "$SCRATCH" --missing); do
  experiment valid 0 "$method"
done
# 2. The SFT models of pipeline seeds 1 and 2, evaluated on test
for seed in 1 2; do experiment test "$seed" sft; done
# 3. The test runs, once the rates chosen on valid are the preset's (studies/scripts/replicated_choice.py says why not)
python studies/scripts/replicated_choice.py --scratch "$SCRATCH"
# Seed 0's sft, sft-continued, dpo and sdpo are the fp32 `study` runs (borrowed by replicated_tables.py), unless
# sdpo's rate moved on valid: then its seed 0 is this folder's own (the valid model, evaluated on test)
SDPO_LR=$(python -c "from trl_sdpo.rec.study.config import load_experiment_config as load
print(load('examples/configs/movielens.yaml', 'study-replicated', check_paths=False).methods['sdpo'].settings.learning_rate)")
if [ "$SDPO_LR" = "0.0001" ]; then experiment test 0 dpo-pairs,random,popular; else experiment test 0 sdpo,dpo-pairs,random,popular; fi
# Cheapest first, one call each, so that a sitting lands what it can finish: on a fresh machine a seed's SFT model is
# trained again first (about 1.5-2 h), and `sdpo` or `dpo-pairs` (reference log-probs of 3 negatives, then training and
# evaluation: about 1.5-2 h) may not fit in what is left of it
for seed in 1 2; do
  for methods in random,popular sft-continued dpo sdpo dpo-pairs; do experiment test "$seed" "$methods"; done
done
echo "=== $(date -u +%FT%TZ) done"
