"""Prediction when a slide has no expression: which runs can, and what each row used.

A run whose model never reads the genes (`ModelSpec.needs_expression` False: the distilled
`subspace-student`, `abmil`) predicts from the slide alone; its gene inputs are zero placeholders
that no output depends on. A run that needs expression is refused for such slides, with the
slides and patients that lack it named. Every prediction row says what it used: `inputs` is
'slides' or 'slides+expression'.
"""

from __future__ import annotations

import pathlib
from typing import Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from smml_jax.data.normalise import SUBSPACES
from smml_jax.evaluate.errors import InferenceError
from smml_jax.evaluate.slide_files import read_slide_features
from smml_jax.evaluate.trained_run import TrainedRun

SLIDES, SLIDES_AND_EXPRESSION = "slides", "slides+expression"
# A cohort's slide-table column that marks slides whose expression is absent (False).
HAS_EXPRESSION = "has_expression"


def slides_only(run: TrainedRun) -> bool:
  """The run predicts from slides alone (its model never reads the genes)."""
  return not run.spec.needs_expression


def learned_absence(run: TrainedRun) -> bool:
  """The run was trained with patients without expression: its model holds a learned "absent"
  gene embedding per subspace (`absent_tumour` / `absent_micro`) and reads `has_expression`."""
  return any(str(name).startswith("absent_") for name in run.params)


def predicts_without_expression(run: TrainedRun) -> bool:
  """Slides without expression can be predicted: a slides-only run, or one that learned absence."""
  return slides_only(run) or learned_absence(run)


def run_inputs(run: TrainedRun) -> str:
  """What the run's predictions use: 'slides' or 'slides+expression'."""
  return SLIDES if slides_only(run) else SLIDES_AND_EXPRESSION


def require_expression(run: TrainedRun, slide_ids: Sequence[str], patient_ids: Sequence[str], where: str) -> None:
  """InferenceError naming the slides (and patients) without expression, unless the run predicts
  from slides alone or there are none."""
  if predicts_without_expression(run) or not len(slide_ids):
    return
  shown = lambda ids: ", ".join(map(str, list(ids)[:10])) + (" ..." if len(ids) > 10 else "")
  patients = list(dict.fromkeys(map(str, patient_ids)))
  raise InferenceError(
    f"{len(slide_ids)} slide(s) have no expression ({where}): {shown(slide_ids)} (patient(s) "
    f"{shown(patients)}); the run {run.run_dir} (model {run.config.model!r}) needs expression "
    "for every slide. Give their expression, or predict them with a run that needs slides "
    "only (e.g. a 'subspace-student' distilled from this run) or one trained with missing "
    "expression (data.drop_expression, missing_expression: allow)"
  )


def expression_missing(slides: pd.DataFrame) -> np.ndarray:
  """(n,) bool: the slides whose expression is absent (the `has_expression` column, if any)."""
  if HAS_EXPRESSION not in slides:
    return np.zeros(len(slides), bool)
  return ~slides[HAS_EXPRESSION].fillna(False).to_numpy(bool)


def placeholder_genes(run: TrainedRun) -> dict[str, np.ndarray]:
  """{'genes_tumour': (Gt,), 'genes_micro': (Gm,)} zeros: inputs a slides-only model never reads."""
  return {f"genes_{s}": np.zeros(len(run.gene_names[s]), np.float32) for s in SUBSPACES}


def slide_only_example(
  run: TrainedRun,
  features_path: str | pathlib.Path,
  *,
  slide_id: Optional[str] = None,
  patient_id: Optional[str] = None,
  **format_options,
) -> dict[str, np.ndarray]:
  """One slide without expression -> an example for a slides-only run (refused otherwise)."""
  features_path = pathlib.Path(features_path)
  slide_id = slide_id or features_path.stem
  require_expression(run, [slide_id], [patient_id or slide_id], f"{features_path} was given without --genes")
  example = read_slide_features(run, features_path, **format_options)
  example.update(placeholder_genes(run))
  if learned_absence(run):  # the model's absent embedding stands in for the genes
    example["has_expression"] = np.asarray(False)
  example["slide_id"] = np.asarray(slide_id)
  example["patient_id"] = np.asarray(patient_id or slide_id)
  return example


def blank_genes(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The batch with its gene inputs zeroed (for a slides-only run: absent or ignored expression)."""
  batch = dict(batch)
  for s in SUBSPACES:
    batch[f"genes_{s}"] = np.zeros_like(np.asarray(batch[f"genes_{s}"], np.float32))
  return batch


def mark_absent(batch: Mapping[str, np.ndarray], absent_ids: frozenset) -> dict[str, np.ndarray]:
  """For a run that learned absence: the batch's slides in `absent_ids` get `has_expression`
  False (their genes are then never read)."""
  batch = dict(batch)
  absent = np.isin(np.asarray(batch["slide_id"]).astype(str), list(absent_ids))
  present = np.asarray(batch.get("has_expression", np.ones(len(absent), bool)), bool)
  batch["has_expression"] = present & ~absent
  return batch


def with_inputs_column(
  run: TrainedRun, table: pd.DataFrame, has_expression: Optional[np.ndarray] = None
) -> pd.DataFrame:
  """The prediction table with `inputs` after the ids: what each row's prediction used
  (`has_expression` (n,) bool: per row, for a run that learned absence)."""
  table = table.copy()
  if learned_absence(run) and has_expression is not None:
    inputs = np.where(np.asarray(has_expression, bool), SLIDES_AND_EXPRESSION, SLIDES)
  else:
    inputs = run_inputs(run)
  table.insert(2, "inputs", inputs)
  return table
