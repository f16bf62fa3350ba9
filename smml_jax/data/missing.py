"""Patients without expression: which training patients a run drops, and the batches that drop it.

`data.drop_expression: f` removes the expression of round(f x n) of the n training patients that
have it, drawn by the run's seed; validation and test patients keep theirs. A dropped patient is
absent exactly as one without expression in the records is: its genes become NaN before the
`Preprocessor`, which marks it `has_expression = False`.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Callable, Mapping

import numpy as np

from smml_jax.data.errors import CohortError
from smml_jax.data.normalise import SUBSPACES, has_expression

# Mixed into the run seed, so the drawn patients do not follow the split's or the shuffle's draw.
_STREAM = 0x6D697373


def dropped_slides(cohort, train_indices: np.ndarray, fraction: float, seed: int) -> np.ndarray:
  """Sorted slide indices (every slide of each drawn patient) whose expression the run drops.

  Args:
    cohort: the opened cohort (`slides`, `genes`).
    train_indices: the TRAINING split's slide indices (never validation or test).
    fraction: in [0, 1], of the training patients that have expression.
    seed: the run seed.
  """
  if not 0.0 <= fraction <= 1.0:
    raise ValueError(f"drop_expression must be in [0, 1], got {fraction!r}")
  train_indices = np.asarray(train_indices, np.int64)
  if fraction == 0.0 or not len(train_indices):
    return np.zeros(0, np.int64)
  patient = cohort.slides["patient_id"].to_numpy()[train_indices]
  present = has_expression(cohort, train_indices)
  candidates = np.unique(patient[present])
  n = int(round(fraction * len(candidates)))
  drawn = np.random.default_rng([int(seed), _STREAM]).choice(candidates, n, replace=False)
  return np.sort(train_indices[np.isin(patient, drawn)])


@dataclasses.dataclass(frozen=True)
class DropExpression:
  """A batch -> `preprocess(batch)` with the genes of the slides in `slide_ids` set to NaN."""

  slide_ids: frozenset[str]
  preprocess: Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]

  def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = dict(batch)
    drop = np.isin(np.asarray(batch["slide_id"]).astype(str), list(self.slide_ids))
    for s in SUBSPACES:
      genes = np.asarray(batch[f"genes_{s}"], np.float32)
      out[f"genes_{s}"] = np.where(drop[:, None], np.float32(np.nan), genes)
    return self.preprocess(out)


def expression_record(cohort, splits: Mapping[str, np.ndarray], dropped: np.ndarray, fraction: float) -> dict:
  """A run's account of absent expression (its cohort record): per split, the slides the cohort
  has no expression for; the training slides whose expression `data.drop_expression` dropped."""
  slide_ids = cohort.slides["slide_id"].to_numpy().astype(str)
  absent = {k: slide_ids[v][~has_expression(cohort, v)].tolist() for k, v in splits.items()}
  return {
    "without_expression": {k: len(v) for k, v in absent.items()},
    "without_expression_slides": absent,
    "drop_expression": fraction,
    "dropped_slides": slide_ids[np.asarray(dropped, np.int64)].tolist(),
  }


def learned_absence(record: Mapping[str, Any]) -> bool:
  """From a run's cohort record: it trained with slides without expression (some absent in the
  cohort or dropped), so its model holds the learned absent embeddings and reads has_expression."""
  expression = record.get("expression") or {}
  return bool(expression.get("dropped_slides")) or any((expression.get("without_expression") or {}).values())


@dataclasses.dataclass(frozen=True)
class WithoutPresence:
  """A batch -> `preprocess(batch)` without `has_expression`: for a run where every slide has
  expression, so the model is exactly the unmasked one (no absent embedding parameters)."""

  preprocess: Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]

  def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = self.preprocess(batch)
    out.pop("has_expression", None)
    return out


MISSING_EXPRESSION = ("error", "allow")


def absent_expression(table, genes_tumour: np.ndarray, genes_micro: np.ndarray, policy: str, where: str) -> dict:
  """Checks a layout's slides without expression (all-NaN rows in both subspaces).

  With `policy` 'error' (the spec's default) any such slide is a CohortError naming its
  patients; with 'allow' they are reported on stderr (the build log) and kept, absent.

  Returns:
    The cohort info entries: {'missing_expression': policy, 'patients_without_expression': [...]}.
  """
  if policy not in MISSING_EXPRESSION:
    raise CohortError(f"{where}: missing_expression must be one of {list(MISSING_EXPRESSION)}, got {policy!r}")
  absent = np.all(np.isnan(genes_tumour), axis=1) & np.all(np.isnan(genes_micro), axis=1)
  patients = sorted(set(table["patient_id"].to_numpy()[absent].astype(str)))
  if patients and policy == "error":
    raise CohortError(
      f"{where}: {len(patients)} patient(s) have no expression "
      f"({int(absent.sum())} slide(s)), e.g. {patients[:5]}; set "
      "`missing_expression: allow` in the spec to train them on histology alone"
    )
  if patients:
    print(
      f"smml_jax: {where}: {len(patients)} patient(s) ({int(absent.sum())} slide(s)) have no "
      f"expression and train on histology alone (missing_expression: allow): {patients[:10]}"
      + (" ..." if len(patients) > 10 else ""),
      file=sys.stderr,
      flush=True,
    )
  return {"missing_expression": policy, "patients_without_expression": patients}
