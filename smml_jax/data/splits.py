"""Patient-level splits -> slide indices. No patient is ever in two parts of one split.

Schemes:
  original  the original's seeded shuffle: np.random.seed(seed); shuffle the sorted unique patient
            ids; train = first 80 %, test = 80-90 %, val = last 10 % (its `novalset` variant:
            `val_fraction=0`, test = the last 33 %).
  kfold     stratified k-fold over patients (stratified by a label, missing = own stratum); fold
            `fold` is the test set, `val_fraction` of the rest (stratified) is validation.
  file      an MCAT-style split file: CSV with columns `train`, `val` (and optionally `test`) of
            patient ids, padded with empty cells. Without a `test` column the file's `val` column
            is the held-out fold and becomes `test`, and `val_fraction` of its train patients
            (stratified, seeded) becomes `val`, as in `kfold`.
"""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, train_test_split

from smml_jax.data.errors import CohortError

SCHEMES = ("original", "kfold", "file")
PARTS = ("train", "val", "test")


def _slides_of(slides: pd.DataFrame, patients: np.ndarray) -> np.ndarray:
  return np.flatnonzero(slides["patient_id"].isin(set(patients)).to_numpy()).astype(np.int64)


def original_patient_split(patient_ids, seed: int, val_fraction: float = 0.1,
                           test_fraction: float = 0.1) -> dict[str, np.ndarray]:
  """The original's split of unique patient ids (np.random.seed + np.random.shuffle)."""
  unique = np.unique(np.asarray(patient_ids, dtype=object).astype(str))
  rng = np.random.RandomState(seed)  # same stream as np.random.seed(seed); np.random.shuffle
  rng.shuffle(unique)
  n = len(unique)
  if val_fraction == 0:  # the original's `novalset`: 67 / 33
    cut = int(n * (1.0 - test_fraction))
    return {"train": unique[:cut], "val": unique[:0], "test": unique[cut:]}
  a, b = int(n * (1.0 - val_fraction - test_fraction)), int(n * (1.0 - val_fraction))
  return {"train": unique[:a], "test": unique[a:b], "val": unique[b:]}


def _strata(patients: pd.DataFrame, stratify: str | None) -> np.ndarray:
  if stratify is None:
    return np.zeros(len(patients), np.int64)
  if stratify not in patients.columns:
    raise CohortError(f"cannot stratify by {stratify!r}: not a label column "
                      f"({sorted(patients.columns)})")
  return patients[stratify].to_numpy()


def kfold_patient_split(patients: pd.DataFrame, n_folds: int, fold: int, seed: int,
                        stratify: str | None = "diagnosis",
                        val_fraction: float = 0.1) -> dict[str, np.ndarray]:
  if not 0 <= fold < n_folds:
    raise CohortError(f"fold must be in [0, {n_folds}), got {fold}")
  ids = patients["patient_id"].to_numpy().astype(str)
  strata = _strata(patients, stratify)
  # Strata too small for k folds fall back to one pooled stratum rather than failing.
  values, counts = np.unique(strata, return_counts=True)
  strata = np.where(np.isin(strata, values[counts < n_folds]), -999, strata)
  skf = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
  rest, test = list(skf.split(ids, strata))[fold]
  train, val = _carve_val(patients, ids[rest], seed, stratify, val_fraction)
  return {"train": train, "val": val, "test": np.sort(ids[test])}


def _carve_val(patients: pd.DataFrame, train_ids: np.ndarray, seed: int, stratify: str | None,
               val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
  """Splits train_ids into (train, val), stratified where every stratum has two patients."""
  if val_fraction <= 0 or len(train_ids) < 2:
    return np.sort(train_ids), train_ids[:0]
  strata = _strata(patients.set_index("patient_id").loc[train_ids].reset_index(), stratify)
  _, counts = np.unique(strata, return_counts=True)
  n_val = int(np.ceil(val_fraction * len(train_ids)))
  n_train = len(train_ids) - n_val
  # Stratify only where sklearn can: every stratum twice, and room for each in both parts.
  can_stratify = counts.min() >= 2 and min(n_val, n_train) >= len(counts)
  train, val = train_test_split(train_ids, test_size=n_val, random_state=seed,
                                stratify=strata if can_stratify else None)
  return np.sort(train), np.sort(val)


def read_split_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Patient ids per part from an MCAT-style split CSV (train, val[, test] columns)."""
  if not os.path.isfile(path):
    raise CohortError(f"split file {path} does not exist")
  table = pd.read_csv(path)
  missing = [c for c in ("train", "val") if c not in table.columns]
  if missing:
    raise CohortError(f"split file {path} lacks columns {missing}; expected train, val[, test]")
  parts = {c: table[c].dropna().astype(str).to_numpy() for c in PARTS if c in table.columns}
  seen: dict[str, str] = {}
  for part in parts:
    for pid in parts[part]:
      if pid in seen and seen[pid] != part:
        raise CohortError(f"split file {path}: patient {pid!r} is in both {seen[pid]!r} and "
                          f"{part!r}")
      seen[pid] = part
  return parts


def make_splits(cohort, scheme: str = "original", seed: int = 0, fold: int = 0, *,
                n_folds: int = 5, stratify: str | None = "diagnosis", val_fraction: float = 0.1,
                test_fraction: float = 0.1,
                split_file: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
  """{'train', 'val', 'test'} -> sorted SLIDE indices of `cohort`, assigned by patient.

  `split_file` may contain `{fold}`, filled with the fold number (MCAT's splits_{fold}.csv).
  Patients the split file names but the cohort lacks are ignored; cohort patients the file does
  not name are left out of every part.
  """
  slides = cohort.slides
  if scheme == "original":
    parts = original_patient_split(slides["patient_id"], seed, val_fraction, test_fraction)
  elif scheme == "kfold":
    parts = kfold_patient_split(cohort.patients, n_folds, fold, seed, stratify, val_fraction)
  elif scheme == "file":
    if split_file is None:
      raise CohortError("scheme='file' needs split_file")
    parts = read_split_file(str(split_file).format(fold=fold))
    if "test" not in parts:
      known = slides["patient_id"].unique()
      train_ids = np.asarray(sorted(set(parts["train"]) & set(known)), dtype=object)
      parts["test"] = parts["val"]
      parts["train"], parts["val"] = _carve_val(cohort.patients, train_ids, seed, stratify,
                                                val_fraction)
  else:
    raise CohortError(f"unknown split scheme {scheme!r}; expected one of {SCHEMES}")
  out = {part: _slides_of(slides, parts[part]) for part in PARTS}
  if scheme == "file" and not len(out["train"]):
    raise CohortError(f"split file {split_file}: no training patient is in the cohort")
  return out


def assert_patient_disjoint(cohort, splits: Mapping[str, np.ndarray]) -> None:
  """Raises CohortError if a patient has slides in two parts of `splits`."""
  pid = cohort.slides["patient_id"].to_numpy()
  sets = {k: set(pid[np.asarray(v, np.int64)]) for k, v in splits.items()}
  names = sorted(sets)
  for i, a in enumerate(names):
    for b in names[i + 1:]:
      if sets[a] & sets[b]:
        raise CohortError(f"patients {sorted(sets[a] & sets[b])[:5]} are in both {a} and {b}")
