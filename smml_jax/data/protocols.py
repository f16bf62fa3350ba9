"""The published evaluation protocols of TCGA GBM-LGG, as patient-index splits of a GenomicCohort.

Each split is a dict of sorted int64 index arrays into the cohort: `train`, `val`, `test`.
Only patients that the cohort's task can use (`cohort.labelled()`) and that the split file names
are kept, so a split can be applied to either source; patients are matched by TCGA barcode.

`pnas15`: `diegom4riano-nebius-fmri-adversarial/data/TCGA_GBMLGG/pnas_splits.csv` (CR-only line
  endings). First column: the TCGA ID; then 15 columns `Randomization - 1` ... `Randomization - 15`
  whose cells are `Train` / `Test` (153 Test and 616 Train of 769 in each). These are repeated random
  splits of SCNN / PathomicFusion: the test sets of different randomizations overlap, they are not a
  partition. For model selection `val` is a stratified `val_fraction` of each split's TRAIN set; the
  test set is never used for selection. On `source='porpoise'` the splits restrict to the 490 patients
  both sources share (the PathomicFusion survival setting with RNA).
`mcat5`: `mahmoodlab-PORPOISE/splits/5foldcv/tcga_gbmlgg/splits_{0..4}.csv` (header `,train,val`;
  `val` NaN-padded). `val` is the held-out fold and `test` is the SAME fold, as in MCAT / PORPOISE:
  models train for a fixed budget with no selection on it (`SELECTS_ON_VAL['mcat5']` is False).
"""

from __future__ import annotations

import pathlib
from typing import Callable

import numpy as np
import pandas as pd

from smml_jax.data import tcga_gbmlgg
from smml_jax.data.tcga_gbmlgg import GBMLGGDataError, GenomicCohort

Split = dict[str, np.ndarray]

NUM_PNAS_SPLITS = 15
NUM_MCAT_FOLDS = 5
# Whether a protocol's `val` is a separate selection set (False: val is the test fold).
SELECTS_ON_VAL = {"pnas15": True, "mcat5": False}
# The source whose published splits define each protocol.
DEFAULT_SOURCE = {"pnas15": "pnas", "mcat5": "porpoise"}


def _sorted(idx) -> np.ndarray:
  return np.sort(np.asarray(idx, np.int64))


def _stratified_holdout(idx: np.ndarray, strata: np.ndarray, fraction: float,
                        rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """(rest, held) with round(fraction * n_s) patients of every stratum s held out (at least one
  when the stratum has two or more patients)."""
  held = []
  for s in np.unique(strata):
    members = rng.permutation(idx[strata == s])
    n = int(round(fraction * len(members)))
    if len(members) >= 2:
      n = min(max(n, 1), len(members) - 1)
    held.append(members[:n])
  held = np.concatenate(held) if held else np.zeros(0, np.int64)
  return _sorted(np.setdiff1d(idx, held)), _sorted(held)


def _strata(cohort: GenomicCohort) -> np.ndarray:
  """Classification: the class; survival: the event flag."""
  return cohort.label()


def pnas15_splits(cohort: GenomicCohort, data_root: str | pathlib.Path,
                  val_fraction: float = 0.15, seed: int = 0,
                  splits: range | list[int] | None = None) -> list[Split]:
  """The 15 SCNN / PathomicFusion train/test splits with a validation part carved from train.

  Args:
    cohort: the cohort (either source); unlabelled patients for its task are left out.
    data_root: folder laid out like `../shared/data`.
    val_fraction: share of each training set held out for model selection, stratified by the
      task label (event flag for survival).
    seed: seeds the validation draw; split k uses the stream (seed, k).
    splits: which of the 15 (0-based) to return, all by default.

  Returns:
    One dict(train, val, test) of sorted patient indices per split.
  """
  if not 0.0 <= val_fraction < 1.0:
    raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
  rel = tcga_gbmlgg.PNAS_SPLITS
  path = pathlib.Path(data_root) / rel
  if not path.is_file():
    raise GBMLGGDataError(f"missing file {path} (expected {rel} under --data-root {data_root})")
  table = pd.read_csv(path, index_col=0)
  columns = [f"Randomization - {k}" for k in range(1, NUM_PNAS_SPLITS + 1)]
  missing = [c for c in columns if c not in table.columns]
  if missing:
    raise GBMLGGDataError(f"{path}: missing column(s) {missing}")
  bad = ~table[columns].isin(["Train", "Test"])
  if bad.to_numpy().any():
    row, col = np.argwhere(bad.to_numpy())[0]
    raise GBMLGGDataError(f"{path}: row {table.index[row]!r} column {columns[col]!r}: "
                          f"{table.iat[row, col]!r}, expected 'Train' or 'Test'")
  usable = cohort.labelled()
  strata = _strata(cohort)
  out = []
  for k in (range(NUM_PNAS_SPLITS) if splits is None else splits):
    assign = table[columns[k]]
    train = cohort.index_of(assign.index[assign == "Train"])
    test = cohort.index_of(assign.index[assign == "Test"])
    train, test = _sorted(train[usable[train]]), _sorted(test[usable[test]])
    rng = np.random.default_rng((seed, k))
    train, val = _stratified_holdout(train, strata[train], val_fraction, rng)
    out.append({"train": train, "val": val, "test": test})
  return out


def mcat5_splits(cohort: GenomicCohort, data_root: str | pathlib.Path,
                 folds: range | list[int] | None = None) -> list[Split]:
  """The 5 MCAT / PORPOISE cross-validation folds: dict(train, val=held-out fold, test=same)."""
  usable = cohort.labelled()
  out = []
  for k in (range(NUM_MCAT_FOLDS) if folds is None else folds):
    rel = tcga_gbmlgg.PORPOISE_SPLITS.format(fold=k)
    path = pathlib.Path(data_root) / rel
    if not path.is_file():
      raise GBMLGGDataError(f"missing file {path} (expected {rel} under --data-root {data_root})")
    table = pd.read_csv(path)
    if not {"train", "val"} <= set(table.columns):
      raise GBMLGGDataError(f"{path}: expected columns 'train' and 'val', found {list(table.columns)}")
    train = cohort.index_of(table["train"].dropna())
    held = cohort.index_of(table["val"].dropna())
    train, held = _sorted(train[usable[train]]), _sorted(held[usable[held]])
    out.append({"train": train, "val": held, "test": held.copy()})
  return out


PROTOCOLS: dict[str, Callable[..., list[Split]]] = {"pnas15": pnas15_splits, "mcat5": mcat5_splits}


def make_splits(protocol: str, cohort: GenomicCohort, data_root: str | pathlib.Path,
                **kwargs) -> list[Split]:
  """`PROTOCOLS[protocol](cohort, data_root, **kwargs)` with a clear error for unknown names."""
  if protocol not in PROTOCOLS:
    raise ValueError(f"unknown protocol {protocol!r}; expected one of {sorted(PROTOCOLS)}")
  return PROTOCOLS[protocol](cohort, data_root, **kwargs)
