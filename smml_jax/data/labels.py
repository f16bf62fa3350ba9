"""Glioma labels by the WHO 2021 rules the original uses, and survival time bins.

Integer codes (missing = -1 throughout):
  grade:     G2 / G3 / G4                                  -> 0 / 1 / 2
  diagnosis: IDH-wildtype glioblastoma                     -> 0
             IDH-mutant astrocytoma, grade 4 (CDKN2A deleted or G4) -> 1
             IDH-mutant astrocytoma, grade 2/3             -> 2
             IDH-mutant, 1p/19q co-deleted oligodendroglioma -> 3
  subtype:   GBM / astrocytoma / oligodendroglioma         -> 0 / 1 / 2 (from IDH and 1p/19q)
"""

from __future__ import annotations

import numpy as np

MISSING = -1

TASK_NUM_CLASSES = {"diagnosis": 4, "grading": 3, "subtype": 3, "survival": 4}
TASK_LABEL_FIELD = {"diagnosis": "diagnosis", "grading": "grade", "subtype": "subtype", "survival": "surv_bin"}
GRADE_CODES = {"G2": 0, "G3": 1, "G4": 2, "2": 0, "3": 1, "4": 2}
# The original's fixed survival cut points (days) between its 4 bins.
ORIGINAL_SURVIVAL_CUTS_DAYS = (233.5, 511.0, 929.0)


def who2021_diagnosis(idh_mutant, codeleted, cdkn2a_deleted, grade) -> np.ndarray:
  """WHO 2021 diagnosis codes from per-patient status arrays.

  Args:
    idh_mutant, codeleted, cdkn2a_deleted: (P,) int arrays, 1 = yes, 0 = no, -1 = unknown.
    grade: (P,) int array of grade codes 0/1/2 (G2/G3/G4), -1 = unknown.

  Returns:
    (P,) int64 diagnosis codes; -1 where the status needed for the rule is unknown.
  """
  idh, codel = np.asarray(idh_mutant), np.asarray(codeleted)
  cdkn2a, grade = np.asarray(cdkn2a_deleted), np.asarray(grade)
  out = np.full(idh.shape, MISSING, np.int64)
  out[idh == 0] = 0
  mutant = idh == 1
  out[mutant & (codel == 1)] = 3
  astro = mutant & (codel == 0)
  high = (cdkn2a == 1) | (grade == 2)
  known_low = (cdkn2a == 0) & (grade >= 0) & (grade < 2)
  out[astro & high] = 1
  out[astro & known_low] = 2
  return out


def who2021_subtype(idh_mutant, codeleted) -> np.ndarray:
  """(P,) subtype codes: 0 = GBM (IDH-wildtype), 1 = astrocytoma, 2 = oligodendroglioma."""
  idh, codel = np.asarray(idh_mutant), np.asarray(codeleted)
  out = np.full(idh.shape, MISSING, np.int64)
  out[idh == 0] = 0
  out[(idh == 1) & (codel == 0)] = 1
  out[(idh == 1) & (codel == 1)] = 2
  return out


def cdkn2a_deleted_from_copy_number(copy_number) -> np.ndarray:
  """1 where the GISTIC-style copy number is -2 or -1 (deletion), 0 otherwise, -1 if NaN."""
  cn = np.asarray(copy_number, np.float64)
  out = np.where(cn <= -1, 1, 0).astype(np.int64)
  out[np.isnan(cn)] = MISSING
  return out


def fit_survival_cuts(times, events, n_bins: int = 4, uncensored_only: bool = True) -> np.ndarray:
  """Interior cut points (n_bins - 1,) at the quantiles of survival time.

  Fit on the TRAINING split only. As in MCAT-style pipelines the quantiles are taken over
  the patients with an observed event unless `uncensored_only` is False.
  """
  times, events = np.asarray(times, np.float64), np.asarray(events)
  pool = times[events == 1] if uncensored_only and np.any(events == 1) else times
  if pool.size == 0:
    raise ValueError("cannot fit survival bins: no survival times in the training split")
  return np.quantile(pool, np.arange(1, n_bins) / n_bins)


def assign_survival_bins(times, cuts) -> np.ndarray:
  """(P,) bin index in [0, len(cuts)] of each time: bin k holds cuts[k-1] <= t < cuts[k]."""
  return np.searchsorted(np.asarray(cuts, np.float64), np.asarray(times, np.float64), side="right").astype(np.int64)


# Histology codes of the original's label generation.
HISTOLOGY_CODES = {"oligoastrocytoma": 0, "astrocytoma": 1, "oligodendroglioma": 2, "glioblastoma": 3}
_IDH_CODES = {
  "wt": 0,
  "wildtype": 0,
  "wild-type": 0,
  "idhwt": 0,
  "0": 0,
  "mutant": 1,
  "mut": 1,
  "mutation": 1,
  "idhmut": 1,
  "1": 1,
}
_CODEL_CODES = {
  "non-codel": 0,
  "noncodel": 0,
  "non-codeleted": 0,
  "0": 0,
  "codel": 1,
  "codeleted": 1,
  "co-deleted": 1,
  "1": 1,
}
_VITAL_CODES = {"1": 1, "dead": 1, "deceased": 1, "0": 0, "alive": 0, "living": 0}
_CATEGORICAL = {
  "idh": _IDH_CODES,
  "codel": _CODEL_CODES,
  "grade": GRADE_CODES,
  "histology": HISTOLOGY_CODES,
  "event": _VITAL_CODES,
}


def _as_key(value) -> str:
  if isinstance(value, (int, np.integer)) or (isinstance(value, (float, np.floating)) and float(value).is_integer()):
    return str(int(value))
  return str(value).strip().lower()


def parse_labels(field: str, values, where: str) -> np.ndarray:
  """(n,) int64 codes of one raw label column; missing (NaN / empty) -> -1.

  field: idh (WT / Mutant), codel (non-codel / codel), grade (G2 / G3 / G4 or 2 / 3 / 4),
    histology (the original's four names), event (vital status: 1 / Dead = death observed,
    0 / Alive), or cdkn2a (copy number; -2 / -1 = deletion).
  Raises ValueError naming `where`, the data row (0-based, header excluded) and the allowed
  values for an unknown value.
  """
  values = list(values)
  if field == "cdkn2a":
    numeric = np.full(len(values), np.nan)
    for row, v in enumerate(values):
      if v is None or (isinstance(v, float) and np.isnan(v)) or str(v).strip() == "":
        continue
      try:
        numeric[row] = float(v)
      except (TypeError, ValueError):
        raise ValueError(
          f"{where}, data row {row}: field 'cdkn2a' value {v!r} is not a copy number (expected -2, -1, 0, 1, 2)"
        ) from None
    return cdkn2a_deleted_from_copy_number(numeric)
  codes = _CATEGORICAL.get(field)
  if codes is None:
    raise ValueError(f"no parser for label field {field!r}")
  lowered = {k.lower(): c for k, c in codes.items()}
  out = np.full(len(values), MISSING, np.int64)
  for row, v in enumerate(values):
    if v is None or (isinstance(v, float) and np.isnan(v)) or str(v).strip() == "":
      continue
    key = _as_key(v)
    if key not in lowered:
      raise ValueError(
        f"{where}, data row {row}: field {field!r} has unknown value {v!r}; expected one of {sorted(set(codes))}"
      )
    out[row] = lowered[key]
  return out
