#!/usr/bin/env bash
# The runs of the MovieLens study's fp32 `test` table (studies/movielens-study-fp32/, preset `study`), in the order
# they are run, into a scratch folder outside the repository (default /work/fp32-precision). From the repository root:
#
#     nohup setsid bash studies/scripts/fp32_study_queue.sh [OUTPUT_DIR] >> fp32-queue.log 2>&1 &
#
# Every line is a `trl-sdpo experiment` call, so the queue can be cut at any moment and run again: a run whose JSON
# exists is skipped, a run cut short resumes from its last Trainer checkpoint (every 8 preference steps, every 16 SFT
# steps), and each run JSON records its sittings. Checkpoints live on the machine's disk only: on a fresh machine the
# queue starts again from the SFT model (about 2.8 h of a 2-core AVX2 EPYC), which every preference seed needs.
#
# A run lands by copying its JSON into studies/movielens-study-fp32/test/<method>/ and rerunning
# studies/scripts/precision_compare.py and studies/scripts/fp32_tables.py (the committed comparison and tables).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-/work/fp32-precision}
LANDED=studies/movielens-study-fp32/test

experiment() {  # experiment SEEDS METHODS: one call of the study's preset, test split, the SFT point fixed
  echo "=== $(date -u +%FT%TZ) seeds $1 methods $2"
  # sft.start_rows is `auto` in the preset: the rule reads the valid curve runs of the output folder, which a scratch
  # folder lacks, so it is the 4,096 rows the rule chose on the study's valid curve (fp32 NOTES.md says more).
  HF_HUB_OFFLINE=1 trl-sdpo experiment --config examples/configs/movielens.yaml --preset study \
    --set sft.start_rows=4096 --output_dir "$OUT" --split test --seeds "$1" --methods "$2"
}

todo() {  # todo METHOD SEED: true when the run has not landed in the committed folder yet
  [ ! -e "$LANDED/$1/seed$2.json" ]
}

# The base model needs no training: evaluation only (~20 min)
if todo base 0; then experiment 0 base; fi
# Seed 1 of the preference stage. Each call first needs the SFT model every seed starts from: on a machine that lost
# it, the first call trains it again (same seed, rows and order), and its Trainer log is compared step by step with the
# committed test/sft/seed0.json (studies/scripts/sft_retrain_check.py) before any run from it lands.
for method in sdpo dpo sft-continued; do
  if todo "$method" 1; then experiment 1 "$method"; fi
done
