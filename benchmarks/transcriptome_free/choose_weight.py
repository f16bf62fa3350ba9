"""Chooses the student's `distill.feature_weight` on validation only (issue 19's full protocol).

`python -m benchmarks.transcriptome_free.choose_weight OUT`: reads the validation AUC at the
selected epoch of every student cell in OUT/sweep/fw<weight>/ (seed 0, folds 0-2, written by
`full_protocol.sh OUT sweep`), chooses the weight with the highest mean (ties: the smallest
weight) and writes OUT/chosen.json. No test metric is read.
"""

from __future__ import annotations

import json
import pathlib
import sys

from smml_jax.evaluate.missing_expression_study import select_on_validation
from smml_jax.models.registry import STUDENT
from smml_jax.train.run_dir import SUMMARY_FILE

FOLDS = (0, 1, 2)
SEED = 0


def validation_rows(sweep_dir: pathlib.Path) -> list[dict]:
  """One row per fold: {'fold', 'val'} from each student cell's summary (its 'val' block only)."""
  rows = []
  for fold in FOLDS:
    file = sweep_dir / "runs" / STUDENT / f"fold{fold}-seed{SEED}" / SUMMARY_FILE
    if not file.is_file():
      raise SystemExit(f"{file} is missing: run `full_protocol.sh OUT sweep` to the end first")
    summary = json.loads(file.read_text())
    metric = summary["selection_metric"]
    rows.append({"fold": fold, "metric": metric, "val": float(summary["val"][metric])})
  return rows


def main(out: pathlib.Path) -> dict:
  folders = [d for d in (out / "sweep").glob("fw*") if d.is_dir()]  # fw<weight>.yaml files beside them
  candidates = {
    float(d.name.removeprefix("fw")): validation_rows(d)
    for d in sorted(folders, key=lambda d: float(d.name.removeprefix("fw")))
  }
  if not candidates:
    raise SystemExit(f"{out / 'sweep'}: no fw<weight> folders")
  chosen, means = select_on_validation(candidates)
  record = {
    "chosen": chosen,
    "rule": f"highest mean validation AUC over seed {SEED}, folds {list(FOLDS)} (ties: the smallest weight)",
    "validation_mean": {str(k): v for k, v in means.items()},
    "validation": {str(k): rows for k, rows in candidates.items()},
  }
  (out / "chosen.json").write_text(json.dumps(record, indent=2) + "\n")
  print(json.dumps(record, indent=2))
  return record


if __name__ == "__main__":
  main(pathlib.Path(sys.argv[1]))
