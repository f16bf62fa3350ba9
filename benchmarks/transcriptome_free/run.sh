#!/bin/bash
# Runs the transcriptome-free comparison fold by fold (each fold's teacher, student and
# baselines together), then aggregates all folds. Usage: run.sh OUT_DIR [SEEDS]
set -e
out=${1:?usage: run.sh OUT_DIR [SEEDS]}
seeds=${2:-0}
cfg=$(dirname "$0")/compare_grading.yaml
for fold in 0 1 2; do
  /usr/bin/time -f "fold $fold wall %e s" nice -n 10 python -m experiments.compare --task grading \
    --compare-config "$cfg" --folds $fold --seeds "$seeds" --out "$out"
done
nice -n 10 python -m experiments.compare --task grading --compare-config "$cfg" --seeds "$seeds" \
  --out "$out"
