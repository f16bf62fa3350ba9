"""Writes benchmarks/RESULTS_transcriptome_free_full.md and its robustness figure from the outputs
of `full_protocol.sh OUT ...` (no typed numbers):

    python -m benchmarks.transcriptome_free.compose_full OUT

Every metric is the test metric at the epoch selected on validation (the comparison cells'
summary.json); the student's feature weight is OUT/chosen.json's (chosen on validation).
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import shutil
import sys
from typing import Sequence

import numpy as np

from smml_jax.evaluate.comparison import CellResult, cell_dir, read_cell
from smml_jax.evaluate.figures.robustness import plot_robustness

FOLDS = (0, 1, 2)
SEEDS = (0, 1, 2)
FRACTIONS = (0.25, 0.5, 0.75, 1.0)
HERE = pathlib.Path(__file__).resolve().parent
DOC = HERE.parent / "RESULTS_transcriptome_free_full.md"
README = HERE.parent.parent / "README.md"
BEGIN, END = "<!-- transcriptome-free full protocol: begin (compose_full.py) -->", "<!-- end -->"
FIGURE = HERE.parent / "transcriptome_free_robustness.png"


def cells(out: pathlib.Path, model: str, task: str = "grading", folds=FOLDS, seeds=SEEDS) -> list[CellResult]:
  """The finished cells (a summary.json) among folds x seeds, in fold-major order."""
  return [
    read_cell(cell_dir(out, model, f, s), model, f, s, task)
    for f in folds
    for s in seeds
    if (cell_dir(out, model, f, s) / "summary.json").is_file()
  ]


def paired(a: Sequence[CellResult], b: Sequence[CellResult], metric: str = "auc") -> np.ndarray:
  """a - b over the (fold, seed) cells both have."""
  bv = {(c.fold, c.seed): c.test_metrics[metric] for c in b}
  return np.asarray([c.test_metrics[metric] - bv[(c.fold, c.seed)] for c in a if (c.fold, c.seed) in bv])


def values(cs: Sequence[CellResult], metric: str = "auc") -> np.ndarray:
  got = np.asarray([c.test_metrics[metric] for c in cs], np.float64)
  if not np.all(np.isfinite(got)):
    raise SystemExit(f"a non-finite {metric} in {[str(c.run_dir) for c in cs]}: not averaged")
  return got


def ms(x: np.ndarray) -> str:
  return f"{x.mean():.3f} ± {x.std(ddof=1):.3f}"


def wall(cs: Sequence[CellResult]) -> str:
  w = [c.wall_s for c in cs if c.wall_s is not None]
  return f"{sum(w) / 60:.0f} min ({np.mean(w):.0f} s per cell)" if w else "n/a"


def records_digest(data_dir: pathlib.Path) -> str:
  """A digest of a synthetic cohort's decoded records (every field of every example, in order):
  equal digests, identical cohorts. The record files' bytes are not compared: two builds of the
  same cohort serialise the same examples to different bytes (tfds' example encoding)."""
  from array_record.python.array_record_module import ArrayRecordReader
  import tensorflow_datasets as tfds

  h = hashlib.sha256()
  for version_dir in sorted(p.parent for p in data_dir.rglob("dataset_info.json")):
    features = tfds.builder_from_directory(str(version_dir)).info.features
    for path in sorted(version_dir.glob("*.array_record-*")):
      reader = ArrayRecordReader(str(path))
      for record in reader.read_all():
        example = features.deserialize_example_np(record)
        for key in sorted(example):
          value = np.asarray(example[key])
          h.update(f"{path.name}/{key}/{value.dtype}/{value.shape}".encode())
          h.update(value.tobytes())
      reader.close()
  return h.hexdigest()[:16]


def robustness_section(out, curve_cells, curve_auc, auc) -> list[str]:
  """The robustness table and figure (every fraction with all its cells)."""
  lines: list[str] = []
  lines += [
    "",
    "## Robustness: training patients without expression",
    "",
    "The subspace model trained after dropping the expression of a seeded fraction of the training",
    "patients (`--set data.drop_expression=F`; validation and test keep theirs), tested with full",
    "inputs; 0 % is the teacher above. The paired column: each cell minus the 0 % cell of the same fold",
    "and seed. The slides-only models are reference lines (they do not depend on the fraction).",
    "",
    "| expression dropped | test AUC | vs 0 % (paired) | lower than 0 % in | wall time |",
    "|---|---|---|---|---|",
  ]
  for f, a in curve_auc.items():
    d = a - curve_auc[0.0]
    vs0 = "" if f == 0.0 else f"{ms(d)}"
    lower = "" if f == 0.0 else f"{int((d < 0).sum())} of {len(d)} cells"
    lines.append(f"| {f:.0%} | {ms(a)} | {vs0} | {lower} | {wall(curve_cells[f])} |")
  for m in ("subspace-student", "abmil"):
    lines.append(f"| {m} (slides only, reference) | {ms(auc[m])} | | | |")
  plot_robustness(
    [(100 * f, a.mean(), a.std(ddof=1)) for f, a in curve_auc.items()],
    {m: (auc[m].mean(), auc[m].std(ddof=1)) for m in ("subspace-student", "abmil")},
    FIGURE,
    ylabel="test AUC",
    spread="3 folds x 3 seeds",
  )
  same = records_digest(out / "data_grading") == records_digest(out / "data_robust")
  lines += [
    "",
    f"![robustness curve]({FIGURE.name})",
    "",
    f"The robustness runs read their own copy of the cohort records ({'identical' if same else 'NOT identical'}"
    " to the table's, by a digest of their decoded examples).",
  ]
  return lines


def main(out: pathlib.Path) -> None:
  chosen = json.loads((out / "chosen.json").read_text())
  fw = chosen["chosen"]
  student_dir = out / "sweep" / f"fw{fw:g}"  # full_protocol.sh names the folders by %g
  table = {
    "subspace": cells(out / "table", "subspace"),
    "subspace-student": cells(student_dir, "subspace-student"),
    "abmil": cells(out / "table", "abmil"),
    "snn": cells(out / "table", "snn"),
  }
  auc = {m: values(cs) for m, cs in table.items()}
  inputs = {"subspace": "slides + genes", "subspace-student": "slides", "abmil": "slides", "snn": "genes"}
  lines = [
    "# Transcriptome-free prediction and missing expression: the full protocol (issue 19)",
    "",
    "Embedded synthetic cohort (400 patients, 16 x 16 grid, 128-d features), grading, protocol",
    "kfold3 (patient-level, stratified) x seeds 0, 1, 2 = 9 cells per model, **test AUC at the epoch",
    "selected on validation AUC**, mean ± sample std over the 9 cells. Written by",
    "`python -m benchmarks.transcriptome_free.compose_full OUT` from the outputs of",
    "`benchmarks/transcriptome_free/full_protocol.sh OUT PART` for PART in table, sweep, choose,",
    "students, robustness, survival (the script's header says what each runs). Teacher and student",
    "train 8 epochs, ABMIL and SNN 20 (`benchmarks/transcriptome_free/compare_grading.yaml`).",
    "Wall times are of the shared 2-core machine (two other engineers' tests and a second experiment",
    "stream at times); the runs in progress at 11:21 UTC on 2026-12-03 (a student of the sweep and the",
    "survival runs with confidence scores) were stopped for 54 min while the machine was measured idle,",
    "which their wall times include.",
    "",
    "## The student: slides only at test time",
    "",
    "| model | inputs at test | test AUC | cells | wall time |",
    "|---|---|---|---|---|",
  ]
  for m, cs in table.items():
    lines.append(f"| {m} | {inputs[m]} | {ms(auc[m])} | {len(cs)} | {wall(cs)} |")
  gap_student = paired(table["subspace-student"], table["abmil"])
  gap_teacher = paired(table["subspace"], table["abmil"])
  gap_snn = paired(table["subspace-student"], table["snn"])
  wins = int((gap_student > 0).sum())
  one_std = max(auc["abmil"].std(ddof=1), auc["subspace-student"].std(ddof=1))
  recovered = gap_student.mean() / gap_teacher.mean() if gap_teacher.mean() > 0 else float("nan")
  lines += [
    "",
    f"Student distillation weights: T = 2, kd_weight 0.01, **feature_weight {fw:g}**, chosen on",
    f"validation ({chosen['rule']}):",
    "",
    "| feature_weight | validation AUC (mean over the 3 cells) |",
    "|---|---|",
  ]
  for k, v in chosen["validation_mean"].items():
    lines.append(f"| {float(k):g}{' (chosen)' if float(k) == fw else ''} | {v:.4f} |")
  lines += [
    "",
    "Paired by cell (same fold, seed and test patients):",
    "",
    f"- student − ABMIL: {ms(gap_student)} (student higher in {wins} of {len(gap_student)} cells);",
    f"- teacher − ABMIL: {ms(gap_teacher)};",
    f"- student − SNN: {ms(gap_snn)};",
    f"- the student recovers {recovered:.0%} of the teacher's mean margin over ABMIL.",
    "",
    f"Target \"the student beats ABMIL by more than one std\": the mean gap {gap_student.mean():.3f} "
    f"against the larger of the two models' stds {one_std:.3f}: "
    f"**{'met' if gap_student.mean() > one_std else 'not met'}**; the paired gap's own std is "
    f"{gap_student.std(ddof=1):.3f}.",
  ]
  # Robustness: the teacher trained with a fraction of training patients' expression dropped.
  curve_cells = {0.0: table["subspace"], **{f: cells(out / "robust" / f"drop{f}", "subspace") for f in FRACTIONS}}
  curve_cells = {f: cs for f, cs in curve_cells.items() if len(cs) == len(FOLDS) * len(SEEDS)}
  curve_auc = {f: values(cs) for f, cs in curve_cells.items()}
  if len(curve_auc) < 2:
    lines += [
      "",
      "## Robustness: training patients without expression",
      "",
      "**Not run at this protocol yet** (`full_protocol.sh OUT robustness`: 36 subspace cells);",
      "the reduced-protocol curve is in [RESULTS_missing_expression.md](RESULTS_missing_expression.md).",
    ]
  else:
    lines += robustness_section(out, curve_cells, curve_auc, auc)
  # Survival: the coordination's modality scores.
  surv = {s: cells(out / "survival" / s, "subspace", "survival", folds=(0,)) for s in ("auto", "confidence")}
  ci = {s: values(cs, "c_index") for s, cs in surv.items()}
  d = ci["confidence"] - ci["auto"]
  lines += [
    "",
    "## Survival: confidence-guided coordination against the batch C-index scores",
    "",
    "Survival on the embedded cohort, fold 0 of kfold3, seeds 0, 1, 2, 8 epochs, test C-index at the",
    "validation-selected epoch (`--set train.coordination_score=auto|confidence`).",
    "",
    "| modality score | test C-index | per seed | wall time |",
    "|---|---|---|---|",
  ]
  for s, v in ci.items():
    label = "batch C-index (`auto`, the paper's)" if s == "auto" else "confidence (`confidence`)"
    lines.append(f"| {label} | {ms(v)} | {', '.join(f'{x:.3f}' for x in v)} | {wall(surv[s])} |")
  lines += ["", f"Paired (confidence − C-index) per seed: {', '.join(f'{x:+.3f}' for x in d)}; mean {d.mean():+.3f}."]
  DOC.write_text("\n".join(lines) + "\n")
  dropped = [(f, a) for f, a in curve_auc.items() if f]
  readme = [
    BEGIN,
    "| grading, kfold3 x 3 seeds | inputs at test | test AUC |",
    "|---|---|---|",
    *(f"| {m} | {inputs[m]} | {ms(auc[m])} |" for m in table),
    *(f"| subspace, {f:.0%} of training expression dropped | slides + genes | {ms(a)} |" for f, a in dropped),
    "",
    f"Student − ABMIL, paired by cell: {ms(gap_student)}; the student recovers {recovered:.0%} of the teacher's",
    f"margin over ABMIL (feature_weight {fw:g}, chosen on validation). Survival (fold 0, seeds 0-2), test",
    f"C-index: batch C-index scores {ms(ci['auto'])}, confidence scores {ms(ci['confidence'])}. Details,",
    "paired differences and wall times:",
    f"[benchmarks/{DOC.name}](benchmarks/{DOC.name}).",
    END,
  ]
  text = README.read_text()
  if BEGIN not in text or END not in text.split(BEGIN, 1)[1]:
    raise SystemExit(f"{README}: the markers {BEGIN!r} ... {END!r} are missing")
  head, rest = text.split(BEGIN, 1)
  README.write_text(head + "\n".join(readme) + rest.split(END, 1)[1])
  shutil.copy(out / "chosen.json", HERE / "chosen_full.json")
  print(DOC.read_text())


if __name__ == "__main__":
  main(pathlib.Path(sys.argv[1]))
