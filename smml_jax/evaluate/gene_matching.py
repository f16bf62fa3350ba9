"""Matching an input's genes to a trained run's, by NAME.

New inputs are reordered into the run's gene order; genes the run needs but the input lacks are an
error that lists them, unless `missing_genes='zero'`, which fills them with the training mean (0
after normalisation).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Mapping, Sequence

import numpy as np

from smml_jax.data.normalise import SUBSPACES, Preprocessor
from smml_jax.evaluate.errors import InferenceError
from smml_jax.evaluate.trained_run import TrainedRun

MISSING_GENE_POLICIES = ("error", "zero")
# An expression file (GDC STAR table or gene/value table) holds RNA values: for a run whose genes are
# named <GENE>_<omic> (CLAM cohorts) its symbol G is the feature G_rnaseq, never G_cnv or G_mut.
EXPRESSION_FILE_OMIC = "rnaseq"


class MissingGenesFilled(UserWarning):
  """`missing_genes='zero'` filled genes the input lacks with the training mean."""


@dataclasses.dataclass(frozen=True)
class GeneAlignment:
  """Maps an input's gene columns onto the run's, per subspace.

  Attributes:
    columns: subspace -> (G,) int index into the input's columns, -1 where the input lacks it.
    fill: subspace -> (G,) raw value that normalises to the training mean (used where -1).
    missing: subspace -> run gene names the input lacks.
  """

  columns: Mapping[str, np.ndarray]
  fill: Mapping[str, np.ndarray]
  missing: Mapping[str, list[str]]

  def apply(self, subspace: str, raw: np.ndarray) -> np.ndarray:
    """(..., G_input) raw expression -> (..., G_run) raw expression in the run's order."""
    idx = self.columns[subspace]
    raw = np.asarray(raw, np.float32)
    out = raw[..., np.maximum(idx, 0)]
    return np.where(idx >= 0, out, self.fill[subspace]).astype(np.float32)


def training_mean_raw(preprocessor: Preprocessor, subspace: str) -> np.ndarray:
  """(G,) raw expression whose normalised value is the training mean (0 after z-scoring)."""
  mean = np.asarray(preprocessor.mean[subspace], np.float64)
  if preprocessor.gene_transform == "log1p_zscore":
    return np.expm1(mean).astype(np.float32)
  return mean.astype(np.float32)


def align_genes(
  run: TrainedRun,
  available: Mapping[str, Sequence[str]] | Sequence[str],
  missing_genes: str = "error",
  where: str = "the input",
) -> GeneAlignment:
  """Matches the run's genes to an input's gene names.

  Args:
    run: the trained run.
    available: the input's gene names, either per subspace (a cohort: {'tumour': [...], ...}) or
      one flat list (a single slide's expression table, which serves both subspaces).
    missing_genes: 'error' (default: raise, listing every missing gene) or 'zero' (fill with the
      training mean, i.e. 0 after normalisation).
    where: names the input in error messages.

  A run gene matches an input gene of exactly the same name (modality suffix included). A flat
  list is an expression file, whose symbol G also serves as G_rnaseq (EXPRESSION_FILE_OMIC). With
  'zero', a MissingGenesFilled warning says how many genes were filled.
  """
  if missing_genes not in MISSING_GENE_POLICIES:
    raise InferenceError(f"missing_genes must be one of {MISSING_GENE_POLICIES}, got {missing_genes!r}")
  flat = not isinstance(available, Mapping)
  columns, fill, missing = {}, {}, {}
  for s in SUBSPACES:
    names = [str(n) for n in (available if flat else available[s])]
    position: dict[str, int] = {}
    for i, name in enumerate(names):
      position.setdefault(name, i)
    if flat:
      for i, name in enumerate(names):
        position.setdefault(f"{name}_{EXPRESSION_FILE_OMIC}", i)
    idx = np.array([position.get(g, -1) for g in run.gene_names[s]], np.int64)
    columns[s] = idx
    missing[s] = [g for g, j in zip(run.gene_names[s], idx) if j < 0]
    fill[s] = training_mean_raw(run.preprocessor, s)
  n_missing = sum(len(v) for v in missing.values())
  listing = "; ".join(f"{s} ({len(v)} of {len(run.gene_names[s])}): {', '.join(v)}" for s, v in missing.items() if v)
  if n_missing and missing_genes == "error":
    raise InferenceError(
      f"{where} lacks {n_missing} gene(s) the run {run.run_dir} was trained "
      f"on: {listing}. Provide them, or pass --missing-genes zero to fill "
      "them with the training mean"
    )
  if n_missing:
    total = sum(len(run.gene_names[s]) for s in SUBSPACES)
    warnings.warn(
      MissingGenesFilled(
        f"{where}: {n_missing} of {total} gene(s) the run was trained on were missing and "
        f"filled with the training mean (--missing-genes zero): {listing}"
      ),
      stacklevel=2,
    )
  return GeneAlignment(columns, fill, missing)
