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

Published protocols of TCGA GBM-LGG (patient-level `GenomicCohort`; index arrays into it):
  pnas15    the 15 SCNN / PathomicFusion train/test randomisations
            (`diegom4riano-nebius-fmri-adversarial/data/TCGA_GBMLGG/pnas_splits.csv`: the TCGA ID,
            then `Randomization - 1..15` cells `Train` / `Test`). Repeated random splits: their test
            sets overlap. `val` is a stratified `val_fraction` of each split's train set (the
            same `stratified_holdout` as `kfold`); the test set is never used for selection. On
            `source='porpoise'` the splits keep the 490 patients both sources share.
  mcat5     the 5 MCAT / PORPOISE folds (`mahmoodlab-PORPOISE/splits/5foldcv/tcga_gbmlgg/
            splits_{0..4}.csv`, read by `read_split_file`). `val` is the held-out fold and `test`
            the SAME fold, as in MCAT / PORPOISE: models train a fixed budget with no selection
            (`SELECTS_ON_VAL['mcat5']` is False).
Only patients the cohort's task can use (`cohort.labelled()`) and the file names are kept;
patients are matched by TCGA barcode, so a protocol applies to either source.
"""

from __future__ import annotations

import os
import pathlib
from typing import Callable, Mapping

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, train_test_split

from smml_jax.data import tcga_gbmlgg_tables as tables
from smml_jax.data.errors import CohortError
from smml_jax.data.tcga_gbmlgg import GenomicCohort
from smml_jax.data.tcga_gbmlgg_tables import GBMLGGDataError

SCHEMES = ("original", "kfold", "file")
PARTS = ("train", "val", "test")


def _slides_of(slides: pd.DataFrame, patients: np.ndarray) -> np.ndarray:
  return np.flatnonzero(slides["patient_id"].isin(set(patients)).to_numpy()).astype(np.int64)


def original_patient_split(
  patient_ids, seed: int, val_fraction: float = 0.1, test_fraction: float = 0.1
) -> dict[str, np.ndarray]:
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
    raise CohortError(f"cannot stratify by {stratify!r}: not a label column ({sorted(patients.columns)})")
  return patients[stratify].to_numpy()


def kfold_patient_split(
  patients: pd.DataFrame,
  n_folds: int,
  fold: int,
  seed: int,
  stratify: str | None = "diagnosis",
  val_fraction: float = 0.1,
) -> dict[str, np.ndarray]:
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


def stratified_holdout(
  ids: np.ndarray, strata: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
  """(rest, held), each sorted: ceil(fraction * n) of `ids` held out, stratified by `strata` (n,)
  where every stratum has two members and room in both parts (else a plain seeded draw)."""
  if fraction <= 0 or len(ids) < 2:
    return np.sort(ids), ids[:0]
  _, counts = np.unique(strata, return_counts=True)
  n_held = int(np.ceil(fraction * len(ids)))
  n_rest = len(ids) - n_held
  can_stratify = counts.min() >= 2 and min(n_held, n_rest) >= len(counts)
  rest, held = train_test_split(ids, test_size=n_held, random_state=seed, stratify=strata if can_stratify else None)
  return np.sort(rest), np.sort(held)


def _carve_val(
  patients: pd.DataFrame, train_ids: np.ndarray, seed: int, stratify: str | None, val_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
  """Splits train_ids into (train, val) by `stratified_holdout`."""
  if val_fraction <= 0 or len(train_ids) < 2:
    return np.sort(train_ids), train_ids[:0]
  strata = _strata(patients.set_index("patient_id").loc[train_ids].reset_index(), stratify)
  return stratified_holdout(train_ids, strata, val_fraction, seed)


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
        raise CohortError(f"split file {path}: patient {pid!r} is in both {seen[pid]!r} and {part!r}")
      seen[pid] = part
  return parts


def make_splits(
  cohort,
  scheme: str = "original",
  seed: int = 0,
  fold: int = 0,
  *,
  n_folds: int = 5,
  stratify: str | None = "diagnosis",
  val_fraction: float = 0.1,
  test_fraction: float = 0.1,
  split_file: str | os.PathLike | None = None,
) -> dict[str, np.ndarray]:
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
      parts["train"], parts["val"] = _carve_val(cohort.patients, train_ids, seed, stratify, val_fraction)
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
    for b in names[i + 1 :]:
      if sets[a] & sets[b]:
        raise CohortError(f"patients {sorted(sets[a] & sets[b])[:5]} are in both {a} and {b}")


# --- published protocols of TCGA GBM-LGG -------------------------------------------------------

NUM_PNAS_SPLITS = 15
NUM_MCAT_FOLDS = 5
# Whether a protocol's `val` is a separate selection set (False: val is the test fold).
SELECTS_ON_VAL = {"pnas15": True, "mcat5": False}
# The source whose published splits define each protocol.
DEFAULT_SOURCE = {"pnas15": "pnas", "mcat5": "porpoise"}
NUM_PROTOCOL_SPLITS = {"pnas15": NUM_PNAS_SPLITS, "mcat5": NUM_MCAT_FOLDS}

Split = dict[str, np.ndarray]


def _usable(idx: np.ndarray, usable: np.ndarray) -> np.ndarray:
  return np.sort(idx[usable[idx]].astype(np.int64))


def _protocol_file(data_root, rel: str) -> pathlib.Path:
  path = pathlib.Path(data_root) / rel
  if not path.is_file():
    raise GBMLGGDataError(f"missing file {path} (expected {rel} under --data-root {data_root})")
  return path


def pnas15_splits(
  cohort: GenomicCohort,
  data_root: str | os.PathLike,
  val_fraction: float = 0.15,
  seed: int = 0,
  splits: range | list[int] | None = None,
) -> list[Split]:
  """The SCNN / PathomicFusion train/test splits with a stratified validation part of train.

  Args:
    cohort: the cohort (either source); patients unlabelled for its task are left out.
    data_root: folder laid out like `../shared/data`.
    val_fraction: share of each training set held out for model selection, stratified by the
      task label (classification: the class; survival: the event flag).
    seed: seeds the validation draw; split k draws with `seed * NUM_PNAS_SPLITS + k`.
    splits: which of the 15 (0-based) to return, all by default.

  Returns:
    One dict(train, val, test) of sorted int64 patient indices per split.
  """
  if not 0.0 <= val_fraction < 1.0:
    raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
  path = _protocol_file(data_root, tables.PNAS_SPLITS)
  table = pd.read_csv(path, index_col=0)
  columns = [f"Randomization - {k}" for k in range(1, NUM_PNAS_SPLITS + 1)]
  missing = [c for c in columns if c not in table.columns]
  if missing:
    raise GBMLGGDataError(f"{path}: missing column(s) {missing}")
  bad = ~table[columns].isin(["Train", "Test"])
  if bad.to_numpy().any():
    row, col = np.argwhere(bad.to_numpy())[0]
    raise GBMLGGDataError(
      f"{path}: row {table.index[row]!r} column {columns[col]!r}: {table.iat[row, col]!r}, expected 'Train' or 'Test'"
    )
  usable, strata = cohort.labelled(), cohort.label()
  out = []
  for k in range(NUM_PNAS_SPLITS) if splits is None else splits:
    assign = table[columns[k]]
    train = _usable(cohort.index_of(assign.index[assign == "Train"]), usable)
    test = _usable(cohort.index_of(assign.index[assign == "Test"]), usable)
    train, val = stratified_holdout(train, strata[train], val_fraction, seed * NUM_PNAS_SPLITS + k)
    out.append({"train": train, "val": val, "test": test})
  return out


def mcat5_splits(
  cohort: GenomicCohort, data_root: str | os.PathLike, folds: range | list[int] | None = None
) -> list[Split]:
  """The 5 MCAT / PORPOISE cross-validation folds: dict(train, val=held-out fold, test=same)."""
  usable = cohort.labelled()
  out = []
  for k in range(NUM_MCAT_FOLDS) if folds is None else folds:
    parts = read_split_file(_protocol_file(data_root, tables.PORPOISE_SPLITS.format(fold=k)))
    train = _usable(cohort.index_of(parts["train"]), usable)
    held = _usable(cohort.index_of(parts["val"]), usable)
    out.append({"train": train, "val": held, "test": held.copy()})
  return out


PROTOCOLS: dict[str, Callable[..., list[Split]]] = {"pnas15": pnas15_splits, "mcat5": mcat5_splits}


def protocol_splits(protocol: str, cohort: GenomicCohort, data_root: str | os.PathLike, **kwargs) -> list[Split]:
  """`PROTOCOLS[protocol](cohort, data_root, **kwargs)`, naming the valid protocols otherwise."""
  if protocol not in PROTOCOLS:
    raise ValueError(f"unknown protocol {protocol!r}; expected one of {sorted(PROTOCOLS)}")
  return PROTOCOLS[protocol](cohort, data_root, **kwargs)
