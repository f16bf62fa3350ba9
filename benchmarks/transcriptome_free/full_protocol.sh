#!/bin/bash
# Issue 19's full protocol on the embedded synthetic cohort: kfold3 x seeds 0, 1, 2, test metrics at
# the validation-selected epoch. Usage (from the repository root):
#   benchmarks/transcriptome_free/full_protocol.sh OUT PART
# PART, in this order (each resumes: a finished cell is skipped):
#   table       the teacher (subspace), ABMIL and SNN cells                       -> OUT/table
#   sweep       the student at distill.feature_weight 0.01 (DML) and 1 on seed 0      -> OUT/sweep/fw*
#   choose      the weight with the highest mean validation AUC (test is not read)  -> OUT/chosen.json
#   students    the chosen weight's students for seeds 1 and 2                     -> OUT/sweep/fw<chosen>
#   robustness  the teacher after dropping 25/50/75/100 % of training expression    -> OUT/robust/drop*
#   survival    survival, batch C-index vs confidence coordination scores, fold 0   -> OUT/survival/*
#   compose     the tables and the figure                 -> benchmarks/RESULTS_transcriptome_free_full.md
# The student sweeps copy their seed's teacher cells (a finished cell is not retrained).
set -euo pipefail
out=${1:?usage: full_protocol.sh OUT PART}
part=${2:?usage: full_protocol.sh OUT PART}
here=$(dirname "$0")
cfg=$here/compare_grading.yaml
grading_data=$out/data_grading  # one record folder for every grading comparison: configs match
run_compare() { /usr/bin/time -f "[time] %e s wall, %U s user" python -m experiments.compare "$@"; }

student_config() {  # the comparison config with the student's feature weight set
  python - "$cfg" "$1" "$2" <<'PY'
import sys, yaml
cfg = yaml.safe_load(open(sys.argv[1]))
cfg["model_layers"].setdefault("subspace-student", {})["distill"] = {"feature_weight": float(sys.argv[2])}
yaml.safe_dump(cfg, open(sys.argv[3], "w"), sort_keys=False)
PY
}

student_cells() {  # student_cells WEIGHT SEEDS: that weight's students, with copies of their teachers
  local fw=$1 seeds=$2 dir=$out/sweep/fw$1
  mkdir -p "$dir/runs/subspace"
  student_config "$fw" "$dir.yaml"
  for seed in ${seeds//,/ }; do
    for fold in 0 1 2; do
      [ -d "$dir/runs/subspace/fold$fold-seed$seed" ] || cp -r "$out/table/runs/subspace/fold$fold-seed$seed" "$dir/runs/subspace/"
    done
  done
  run_compare --task grading --compare-config "$dir.yaml" --models subspace,subspace-student --seeds "$seeds" \
    --data-dir "$grading_data" --out "$dir"
}

case $part in
  table)
    run_compare --task grading --compare-config "$cfg" --models subspace,abmil,snn --seeds 0,1,2 \
      --data-dir "$grading_data" --out "$out/table" ;;
  sweep)
    for fw in 0.01 1; do student_cells $fw 0; done ;;
  choose)
    python -m benchmarks.transcriptome_free.choose_weight "$out" ;;
  students)
    fw=$(python -c "import json,sys; print(format(json.load(open(sys.argv[1]))['chosen'], 'g'))" "$out/chosen.json")  # as the sweep's folders
    student_cells "$fw" 0,1,2 ;;
  robustness)
    for f in 0.25 0.5 0.75 1.0; do
      run_compare --task grading --compare-config "$cfg" --models subspace --seeds 0,1,2 \
        --set data.drop_expression=$f --data-dir "$out/data_robust" --out "$out/robust/drop$f"
    done ;;
  survival)
    for score in auto confidence; do
      run_compare --task survival --models subspace --folds 0 --seeds 0,1,2 \
        --set train.coordination_score=$score --set train.epochs=8 --set train.progress=false \
        --data-dir "$out/data_survival" --out "$out/survival/$score"
    done ;;
  compose)
    python -m benchmarks.transcriptome_free.compose_full "$out" ;;
  *) echo "unknown PART $part" >&2; exit 2 ;;
esac
