"""Preprocessing fitted on the training split only, serialisable to JSON.

Gene transforms: `log1p_zscore` (default for FPKM-like expression: log1p, then z-score with the
training mean/std), `zscore` (for data that are already log-scale or z-scores, such as the CLAM
tables' `_rnaseq` columns), `raw` (unchanged). `clip` bounds the normalised values (useful for
heavy-tailed z-scores).

Absent expression: a record whose genes are NaN (a patient without expression, or one whose
expression a run drops) is absent. The statistics are fitted on the training patients that have
expression only, and `__call__` gives every batch `has_expression` (B,) bool with the absent rows'
genes set to 0 (finite, the training mean after the z-score).

Survival bins: quartile cuts of the training patients' survival times (`survival_cuts='train'`),
or the original's fixed 233.5 / 511 / 929 days (`'original'`), or any explicit list of cut points.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Mapping, Sequence

import numpy as np

from smml_jax.data import labels as labels_lib
from smml_jax.data.errors import CohortError

GENE_TRANSFORMS = ("log1p_zscore", "zscore", "raw")
SUBSPACES = ("tumour", "micro")


@dataclasses.dataclass(frozen=True)
class Preprocessor:
  """Gene normalisation stats and survival cut points; `__call__` applies them to a batch."""

  gene_transform: str
  mean: Mapping[str, tuple[float, ...]]
  std: Mapping[str, tuple[float, ...]]
  surv_cuts: tuple[float, ...]
  clip: float | None = None

  def transform_genes(self, subspace: str, genes: np.ndarray) -> np.ndarray:
    """(..., G) raw -> normalised float32."""
    x = np.asarray(genes, np.float64)
    if self.gene_transform == "raw":
      return x.astype(np.float32)
    if self.gene_transform == "log1p_zscore":
      x = np.log1p(np.maximum(x, 0.0))
    x = (x - np.asarray(self.mean[subspace])) / np.asarray(self.std[subspace])
    if self.clip is not None:
      x = np.clip(x, -self.clip, self.clip)
    return x.astype(np.float32)

  def survival_bins(self, surv_time: np.ndarray) -> np.ndarray:
    """(...,) int64 bins of survival times in days; -1 where the time is missing (< 0)."""
    t = np.asarray(surv_time, np.float64)
    bins = labels_lib.assign_survival_bins(t, self.surv_cuts)
    return np.where(t < 0, labels_lib.MISSING, bins).astype(np.int64)

  def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Normalised genes, `has_expression` (B,) bool (False where any gene is NaN, or where the
    batch already says so) and, given `surv_time`, `surv_bin`."""
    out = dict(batch)
    present = np.asarray(batch.get("has_expression", True), bool)
    for s in SUBSPACES:
      present = present & np.all(np.isfinite(np.asarray(batch[f"genes_{s}"])), axis=-1)
    for s in SUBSPACES:
      genes = self.transform_genes(s, np.nan_to_num(np.asarray(batch[f"genes_{s}"])))
      out[f"genes_{s}"] = np.where(present[..., None], genes, np.float32(0.0))
    out["has_expression"] = present
    if "surv_time" in batch:
      out["surv_bin"] = self.survival_bins(batch["surv_time"])
    return out

  def to_json(self) -> str:
    return json.dumps(
      {
        "gene_transform": self.gene_transform,
        "mean": {k: list(v) for k, v in self.mean.items()},
        "std": {k: list(v) for k, v in self.std.items()},
        "surv_cuts": list(self.surv_cuts),
        "clip": self.clip,
      }
    )

  @classmethod
  def from_json(cls, text: str) -> "Preprocessor":
    d = json.loads(text)
    return cls(
      gene_transform=d["gene_transform"],
      mean={k: tuple(v) for k, v in d["mean"].items()},
      std={k: tuple(v) for k, v in d["std"].items()},
      surv_cuts=tuple(d["surv_cuts"]),
      clip=d.get("clip"),
    )


def _first_slide_per_patient(cohort, indices: np.ndarray) -> np.ndarray:
  """Training statistics count each patient once (patients with two slides share genes)."""
  pid = cohort.slides["patient_id"].to_numpy()[indices]
  _, first = np.unique(pid, return_index=True)
  return np.sort(indices[first])


def has_expression(cohort, indices: np.ndarray) -> np.ndarray:
  """(n,) bool: the slides' raw expression is present (no NaN in either subspace)."""
  present = np.ones(len(indices), bool)
  for s in SUBSPACES:
    present &= np.all(np.isfinite(cohort.genes(s, indices)), axis=1)
  return present


def fit_preprocessor(
  cohort,
  train_indices: np.ndarray,
  *,
  gene_transform: str | None = None,
  survival_cuts: str | Sequence[float] = "train",
  n_bins: int = 4,
  uncensored_only: bool = True,
  clip: float | None = None,
  absent: np.ndarray | None = None,
) -> Preprocessor:
  """Fit on the TRAINING slides only (`train_indices` from make_splits).

  Gene statistics use the training patients with expression: not NaN in the records and not in
  `absent` (slide indices whose expression the run drops). With none, the z-score is the
  identity (mean 0, std 1). Survival cut points use every training patient.
  """
  transform = gene_transform or cohort.gene_transform
  if transform not in GENE_TRANSFORMS:
    raise CohortError(f"gene_transform must be one of {GENE_TRANSFORMS}, got {transform!r}")
  train_indices = np.asarray(train_indices, np.int64)
  if train_indices.size == 0:
    raise CohortError("cannot fit the preprocessor on an empty training split")
  idx = _first_slide_per_patient(cohort, train_indices)
  with_genes = idx[has_expression(cohort, idx)]
  if absent is not None:
    with_genes = with_genes[~np.isin(with_genes, np.asarray(absent, np.int64))]
  mean, std = {}, {}
  for s in SUBSPACES:
    x = cohort.genes(s, with_genes).astype(np.float64)
    if not len(x):
      mean[s], std[s] = (0.0,) * len(cohort.gene_names[s]), (1.0,) * len(cohort.gene_names[s])
      continue
    if transform == "log1p_zscore":
      if (x < 0).any():
        gene = cohort.gene_names[s][int(np.argwhere(x < 0)[0, 1])]
        raise CohortError(
          f"gene_transform='log1p_zscore' needs non-negative expression, but "
          f"{s} gene {gene!r} has negative values (z-scored data? use 'zscore')"
        )
      x = np.log1p(x)
    m, sd = x.mean(0), x.std(0)
    mean[s], std[s] = tuple(m.tolist()), tuple(np.where(sd > 1e-8, sd, 1.0).tolist())
  if isinstance(survival_cuts, str):
    if survival_cuts == "original":
      cuts = labels_lib.ORIGINAL_SURVIVAL_CUTS_DAYS
    elif survival_cuts == "train":
      t = cohort.slides["surv_time"].to_numpy()[idx]
      e = cohort.slides["event"].to_numpy()[idx]
      known = t >= 0
      cuts = labels_lib.fit_survival_cuts(t[known], e[known], n_bins, uncensored_only)
    else:
      raise CohortError(f"survival_cuts must be 'train', 'original' or a list of days, got {survival_cuts!r}")
  else:
    cuts = survival_cuts
  cuts = tuple(float(c) for c in cuts)
  if list(cuts) != sorted(cuts):
    raise CohortError(f"survival cut points must increase, got {cuts}")
  return Preprocessor(transform, mean, std, cuts, clip)
