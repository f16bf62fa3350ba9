"""Normalisation of patient-level genomics, fitted on the training patients only.

Raw values are clipped to [-clip, clip] (RNA z-scores of the TCGA tables reach |z| ~ 3500; copy
number, arm values and mutation flags lie inside the range and are untouched), then standardised
with the training mean and standard deviation; missing cells (NaN) become the training mean, i.e. 0.
"""

from __future__ import annotations

import dataclasses

import numpy as np

CLIP = 10.0


@dataclasses.dataclass(frozen=True)
class GenomicNormaliser:
  """Clip to [-clip, clip], subtract the training mean, divide by the training std (per feature).

  Fields are (F,) float64 arrays per subspace; NaN inputs map to 0 (the training mean).
  """

  clip: float
  mean_tumour: np.ndarray
  scale_tumour: np.ndarray
  mean_micro: np.ndarray
  scale_micro: np.ndarray

  def apply(self, x_tumour: np.ndarray, x_micro: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, Ft), (N, Fm) raw features -> normalised float32 arrays of the same shapes."""
    return (
      _standardise(x_tumour, self.clip, self.mean_tumour, self.scale_tumour),
      _standardise(x_micro, self.clip, self.mean_micro, self.scale_micro),
    )


def _standardise(x, clip, mean, scale) -> np.ndarray:
  x = np.asarray(x, np.float64)
  if x.ndim != 2 or x.shape[1] != mean.shape[0]:
    raise ValueError(f"expected features of shape (N, {mean.shape[0]}), got {x.shape}")
  z = (np.clip(x, -clip, clip) - mean) / scale
  return np.nan_to_num(z, nan=0.0).astype(np.float32)


def _fit_stats(x: np.ndarray, clip: float) -> tuple[np.ndarray, np.ndarray]:
  x = np.clip(np.asarray(x, np.float64), -clip, clip)
  if x.shape[1] == 0:
    return np.zeros(0), np.ones(0)
  known = ~np.isnan(x)
  count = known.sum(0)
  mean = np.where(count > 0, np.nansum(x, 0) / np.maximum(count, 1), 0.0)
  var = np.where(count > 1, np.nansum((x - mean) ** 2, 0) / np.maximum(count - 1, 1), 0.0)
  std = np.sqrt(var)
  return mean, np.where(std > 1e-8, std, 1.0)  # constant training columns pass through centred


def fit_genomic_normaliser(x_tumour: np.ndarray, x_micro: np.ndarray, clip: float = CLIP) -> GenomicNormaliser:
  """Statistics of the TRAINING rows (N, Ft) and (N, Fm) (NaN = missing, ignored)."""
  mt, st = _fit_stats(x_tumour, clip)
  mm, sm = _fit_stats(x_micro, clip)
  return GenomicNormaliser(clip, mt, st, mm, sm)
