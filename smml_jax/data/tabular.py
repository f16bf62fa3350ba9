"""Helpers shared by the real-data layouts: paths, label columns, slide tables."""

from __future__ import annotations

import os
import pathlib
from typing import Mapping

import numpy as np
import pandas as pd

from smml_jax.data import labels as labels_lib
from smml_jax.data.errors import CohortError


def resolve(root: pathlib.Path, path: str | os.PathLike) -> pathlib.Path:
  path = pathlib.Path(os.path.expanduser(str(path)))
  return path if path.is_absolute() else root / path


def column(table: pd.DataFrame, ref: int | str, field: str, where: str) -> pd.Series:
  """A column by position (int, negative from the end) or by name."""
  if isinstance(ref, (int, np.integer)):
    if not -table.shape[1] <= int(ref) < table.shape[1]:
      raise CohortError(f"{where}: field {field!r} is column {ref}, but the table has only {table.shape[1]} columns")
    return table.iloc[:, int(ref)]
  if ref not in table.columns:
    raise CohortError(f"{where}: no column {ref!r} for field {field!r} (columns: {list(table.columns)})")
  return table[ref]


def parse(field: str, values, where: str) -> np.ndarray:
  try:
    return labels_lib.parse_labels(field, values, where)
  except ValueError as e:
    raise CohortError(str(e)) from None


def numeric(values: pd.Series, field: str, where: str) -> np.ndarray:
  """float64 values; empty -> NaN; non-numbers are an error naming the row."""
  out = pd.to_numeric(values, errors="coerce").to_numpy(np.float64)
  bad = np.flatnonzero(np.isnan(out) & values.notna().to_numpy() & (values.astype(str).str.strip() != "").to_numpy())
  if bad.size:
    raise CohortError(f"{where}, data row {bad[0]}: field {field!r} value {values.iloc[bad[0]]!r} is not a number")
  if np.isinf(out).any():
    raise CohortError(f"{where}, data row {np.flatnonzero(np.isinf(out))[0]}: field {field!r} is infinite")
  return out


def slide_table(
  patient_id, slide_id, status: Mapping[str, np.ndarray], surv_days: np.ndarray, event: np.ndarray, where: str
) -> pd.DataFrame:
  """The slide table (features.TABLE_COLUMNS) from parsed per-slide status, WHO 2021 labels."""
  patient_id = np.asarray(patient_id).astype(str)
  slide_id = np.asarray(slide_id).astype(str)
  dup = pd.Series(slide_id)[pd.Series(slide_id).duplicated()]
  if len(dup):
    raise CohortError(
      f"{where}: duplicated slide id {dup.iloc[0]!r} (data rows "
      f"{np.flatnonzero(slide_id == dup.iloc[0]).tolist()}); each slide must "
      "appear once"
    )
  if (surv_days < 0).any():
    raise CohortError(f"{where}, data row {np.flatnonzero(surv_days < 0)[0]}: negative survival time")
  idh, codel, cdkn2a, grade = (status[k] for k in ("idh", "codel", "cdkn2a", "grade"))
  return pd.DataFrame(
    {
      "patient_id": patient_id,
      "slide_id": slide_id,
      "idh": idh,
      "codel": codel,
      "cdkn2a": cdkn2a,
      "histology": status["histology"],
      "grade": grade,
      "diagnosis": labels_lib.who2021_diagnosis(idh, codel, cdkn2a, grade),
      "subtype": labels_lib.who2021_subtype(idh, codel),
      "event": np.where(np.isnan(surv_days), labels_lib.MISSING, event).astype(np.int64),
      "surv_time": np.where(np.isnan(surv_days), -1.0, surv_days).astype(np.float32),
    }
  )


def check_patient_labels(table: pd.DataFrame, where: str) -> None:
  """A patient's slides must carry the same labels; a conflict is an error naming the rows.

  table: one row per slide (data row order of `where`) with patient_id, slide_id and label
  columns (every column but the ids is compared; NaN equals NaN).
  """
  fields = [c for c in table.columns if c not in ("patient_id", "slide_id")]
  patients = table["patient_id"].astype(str).to_numpy()
  for field in fields:
    values = table[field].astype(str).to_numpy()
    for patient in pd.unique(patients[pd.Series(patients).duplicated(keep=False).to_numpy()]):
      rows = np.flatnonzero(patients == patient)
      if len(set(values[rows])) > 1:
        shown = ", ".join(f"data row {r} (slide {table['slide_id'].iloc[r]!r}): {table[field].iloc[r]!r}" for r in rows)
        raise CohortError(
          f"{where}: patient {patient!r} has conflicting {field!r} labels across "
          f"its slides: {shown}; a patient's slides must agree"
        )
