"""How well a distilled student's predicted gene embeddings match its teacher's SNN embeddings.

`python -m benchmarks.transcriptome_free.embedding_agreement COMPARE_DIR [--split test]`: for
every fold/seed cell with both a `subspace` (teacher) and a `subspace-student` run, runs both on
the cell's stored split and prints, per subspace, the mean over embedding dimensions of the
Pearson correlation between the student's predicted and the teacher's gene embedding (dimensions
constant in the teacher are left out and counted), the fraction of the teacher embedding's
variance the prediction explains (R^2 over all dimensions), and the teacher/student agreement of
predicted classes.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Sequence

import numpy as np

FIELDS = ("logits", "gene_tumour", "gene_micro", "embed_tumour", "embed_micro")


def _outputs(run_path: pathlib.Path, split: str) -> dict[str, np.ndarray]:
  from smml_jax.data.spec import load_cohort
  from smml_jax.evaluate import inference as inf

  run = inf.load_run(run_path)
  cohort = load_cohort(run.config.data.data, run.config.data.data_dir)
  indices = inf.split_indices(run, cohort, split)
  return inf.run_model(run, inf.cohort_batches(run, cohort, indices), fields=FIELDS)


def agreement(teacher: np.ndarray, student: np.ndarray) -> dict[str, float]:
  """(n, H) teacher and student embeddings -> mean per-dimension Pearson r, R^2, constant dims."""
  varying = teacher.std(axis=0) > 1e-6
  t, s = teacher[:, varying], student[:, varying]
  tc, sc = t - t.mean(0), s - s.mean(0)
  denom = np.sqrt((tc**2).sum(0) * (sc**2).sum(0))
  r = np.where(denom > 0, (tc * sc).sum(0) / np.maximum(denom, 1e-30), 0.0)
  r2 = 1.0 - ((teacher - student) ** 2).sum() / max(((teacher - teacher.mean(0)) ** 2).sum(), 1e-30)
  return {
    "mean_r": float(r.mean()) if r.size else float("nan"),
    "r2": float(r2),
    "constant_dims": int((~varying).sum()),
    "dims": int(teacher.shape[1]),
  }


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("compare_dir")
  p.add_argument("--split", default="test", choices=("train", "val", "test"))
  args = p.parse_args(argv)
  root = pathlib.Path(args.compare_dir) / "runs"
  rows = []
  for student in sorted((root / "subspace-student").glob("fold*-seed*")):
    teacher = root / "subspace" / student.name
    if not (student / "summary.json").is_file() or not (teacher / "summary.json").is_file():
      continue
    t, s = _outputs(teacher, args.split), _outputs(student, args.split)
    row = {"cell": student.name}
    for sub in ("tumour", "micro"):
      for key, value in agreement(t[f"gene_{sub}"], s[f"gene_{sub}"]).items():
        row[f"gene_{sub}_{key}"] = value
      row[f"embed_{sub}_mean_r"] = agreement(t[f"embed_{sub}"], s[f"embed_{sub}"])["mean_r"]
    row["pred_agreement"] = float(np.mean(t["logits"].argmax(-1) == s["logits"].argmax(-1)))
    rows.append(row)
    print(json.dumps(row))
  if not rows:
    print(f"no cell of {root} has both a finished subspace and subspace-student run", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
