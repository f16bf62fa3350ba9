"""The real TCGA GBM-LGG genomics cohort: patient-level features, labels and gene subspaces.

The sources (`pnas`, `porpoise`), how their tables are read and which columns form the tumour
and micro subspaces: `tcga_gbmlgg_tables`.

Labels (codes of `smml_jax.data.labels`, -1 = unknown): `grade` 0/1/2 = WHO G2/G3/G4; `subtype`
from IDH and 1p/19q; `diagnosis` from IDH, 1p/19q, CDKN2A deletion (copy number <= -1, the
project-wide `cdkn2a_deleted_from_copy_number`) and grade.

Feature exclusion per task: a label computed from input columns would be trivially recoverable, so
  subtype:   drops IDH and 1p/19q columns (`idh mutation`, `codeletion`; `IDH1_mut`);
  diagnosis: drops those and the CDKN2A copy number the rule reads (`CDKN2A`; `CDKN2A_cnv`).
             Grade is also read by the rule but is clinical, never an input feature.
  grading, survival: nothing dropped.
Only the columns the rules read are dropped. Correlated biology stays in (e.g. the 9p21 neighbours
CDKN2B / MTAP of CDKN2A, ATRX / TP53 / CIC / FUBP1 mutations that co-occur with IDH / 1p/19q
status), so those tasks remain easier than histology-only ones.

Normalisation is fitted on training patients only (`GenomicCohort.fit_normaliser(train_idx)`, see
`genomic_normaliser`): values clipped to [-CLIP, CLIP] and standardised with the training mean and
standard deviation; missing cells (NaN, PNAS only) become the training mean, i.e. 0.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Iterable, Sequence

import numpy as np

from smml_jax.data import labels
from smml_jax.data.genomic_normaliser import CLIP, GenomicNormaliser, fit_genomic_normaliser
from smml_jax.data.tcga_gbmlgg_tables import PNAS_IDH_CODEL, PORPOISE_IDH_CODEL, GBMLGGDataError, load_raw

SOURCES = ("pnas", "porpoise")
# Per task, the field whose codes stratify its splits and the fields a patient must have known.
STRATUM_FIELD = {"grading": "grade", "diagnosis": "diagnosis", "subtype": "subtype", "survival": "event"}
REQUIRED_FIELDS = {
  "grading": ("grade",),
  "diagnosis": ("diagnosis",),
  "subtype": ("subtype",),
  "survival": ("surv_time", "event"),
}
TASKS = tuple(STRATUM_FIELD)

# Columns each label rule reads, per source: dropped from that task's inputs.
LABEL_DEFINING_COLUMNS = {
  "pnas": {"subtype": PNAS_IDH_CODEL, "diagnosis": PNAS_IDH_CODEL + ("CDKN2A",)},
  "porpoise": {"subtype": PORPOISE_IDH_CODEL, "diagnosis": PORPOISE_IDH_CODEL + ("CDKN2A_cnv",)},
}


@dataclasses.dataclass(frozen=True)
class GenomicCohort:
  """Patient-level genomics with labels (P patients; arrays share the patient axis).

  Attributes:
    source: 'pnas' or 'porpoise'.
    task: the task the feature exclusion was made for.
    case_ids: (P,) str TCGA patient barcodes.
    x_tumour: (P, Ft) float32 raw tumour-subspace features (NaN = missing).
    x_micro: (P, Fm) float32 raw microenvironment features; Fm = 0 when unavailable.
    tumour_features, micro_features: column names, (Ft,) and (Fm,).
    excluded_features: input columns dropped for `task` (they define its label).
    idh, codel, cdkn2a: (P,) int64 status, 1 = mutant / co-deleted / deleted, -1 unknown.
    grade, diagnosis, subtype: (P,) int64 label codes, -1 unknown.
    surv_time: (P,) float32 days; event: (P,) int64, 1 = death observed.
  """

  source: str
  task: str
  case_ids: np.ndarray
  x_tumour: np.ndarray
  x_micro: np.ndarray
  tumour_features: tuple[str, ...]
  micro_features: tuple[str, ...]
  excluded_features: tuple[str, ...]
  idh: np.ndarray
  codel: np.ndarray
  cdkn2a: np.ndarray
  grade: np.ndarray
  diagnosis: np.ndarray
  subtype: np.ndarray
  surv_time: np.ndarray
  event: np.ndarray

  @property
  def num_patients(self) -> int:
    return len(self.case_ids)

  @property
  def has_micro(self) -> bool:
    return self.x_micro.shape[1] > 0

  @property
  def features(self) -> np.ndarray:
    """(P, Ft + Fm) both subspaces side by side (tumour first), e.g. for `snn` / `linear`."""
    return np.concatenate([self.x_tumour, self.x_micro], axis=1)

  def label(self, task: str | None = None) -> np.ndarray:
    """(P,) int64 codes that stratify `task`'s splits (`STRATUM_FIELD`): its classes, or for
    survival the event flags."""
    return getattr(self, STRATUM_FIELD[_check_task(task or self.task)])

  def labelled(self, task: str | None = None) -> np.ndarray:
    """(P,) bool: every field `task` needs is known (`REQUIRED_FIELDS`: finite and >= 0; class
    codes are -1 when unknown)."""
    needed = [getattr(self, field) for field in REQUIRED_FIELDS[_check_task(task or self.task)]]
    return np.logical_and.reduce([np.isfinite(x) & (x >= 0) for x in needed])

  def index_of(self, case_ids: Iterable[str]) -> np.ndarray:
    """Patient indices of `case_ids` (those absent from the cohort are skipped)."""
    where = {c: i for i, c in enumerate(self.case_ids)}
    return np.asarray([where[c] for c in case_ids if c in where], np.int64)

  def fit_normaliser(self, train_idx: Sequence[int], clip: float = CLIP) -> GenomicNormaliser:
    """Normalisation statistics from the training patients `train_idx` only."""
    train_idx = np.asarray(train_idx, np.int64)
    if train_idx.size == 0:
      raise ValueError("fit_normaliser needs at least one training patient")
    return fit_genomic_normaliser(self.x_tumour[train_idx], self.x_micro[train_idx], clip)

  def genes(self, idx: Sequence[int], normaliser: GenomicNormaliser) -> dict[str, np.ndarray]:
    """Normalised `genes_tumour` (N, Ft) and `genes_micro` (N, Fm) of patients `idx`."""
    idx = np.asarray(idx, np.int64)
    xt, xm = normaliser.apply(self.x_tumour[idx], self.x_micro[idx])
    return {"genes_tumour": xt, "genes_micro": xm}

  def survival_bins(self, train_idx: Sequence[int], n_bins: int = 4) -> np.ndarray:
    """(P,) int64 survival bins, cut points at event-time quantiles of the TRAINING patients."""
    train_idx = np.asarray(train_idx, np.int64)
    cuts = labels.fit_survival_cuts(self.surv_time[train_idx], self.event[train_idx], n_bins)
    return labels.assign_survival_bins(self.surv_time, cuts)


def _check_task(task: str) -> str:
  if task not in TASKS:
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
  return task


def load_gbmlgg(data_root: str | pathlib.Path, source: str = "pnas", task: str = "grading") -> GenomicCohort:
  """The TCGA GBM-LGG cohort of `source`, with the inputs of `task` (see the module docstring)."""
  data_root = pathlib.Path(data_root)
  if source not in SOURCES:
    raise ValueError(f"unknown source {source!r}; expected one of {SOURCES}")
  _check_task(task)
  if not data_root.is_dir():
    raise GBMLGGDataError(f"--data-root {data_root} is not a folder")
  raw = load_raw(str(data_root.resolve()), source)
  excluded = LABEL_DEFINING_COLUMNS[source].get(task, ())
  tumour = [c for c in raw["tumour"] if c not in excluded]
  micro = [c for c in raw["micro"] if c not in excluded]
  table = raw["table"]
  grade = raw["grade"]
  return GenomicCohort(
    source=source,
    task=task,
    case_ids=raw["case_ids"].copy(),
    x_tumour=table[tumour].to_numpy(np.float32).reshape(len(table), len(tumour)),
    x_micro=table[micro].to_numpy(np.float32).reshape(len(table), len(micro)),
    tumour_features=tuple(tumour),
    micro_features=tuple(micro),
    excluded_features=tuple(c for c in excluded if c in raw["tumour"] + raw["micro"]),
    idh=raw["idh"].copy(),
    codel=raw["codel"].copy(),
    cdkn2a=raw["cdkn2a"].copy(),
    grade=grade.copy(),
    diagnosis=labels.who2021_diagnosis(raw["idh"], raw["codel"], raw["cdkn2a"], grade),
    subtype=labels.who2021_subtype(raw["idh"], raw["codel"]),
    surv_time=raw["surv_time"].astype(np.float32),
    event=raw["event"].astype(np.int64),
  )
