"""`Cohort`: a written cohort as the training code sees it."""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

import numpy as np
import pandas as pd

from smml_jax.data import builders
from smml_jax.data import features as features_lib


@dataclasses.dataclass
class Cohort:
  """Records (random access by slide index) plus the slide table used for splitting.

  Attributes:
    source: tfds data source; `len(source)` slides, `source[i]` / `source.__getitems__(idx)`.
    slides: one row per slide, in record order: `features.TABLE_COLUMNS`.
    grid_side, feature_dim: patches are (grid_side ** 2, feature_dim).
    gene_names: {'tumour': [...], 'micro': [...]} in record order.
    gene_transform: the cohort's default gene normalisation (see normalise.py).
    path: the dataset version directory.
    raw_genes: {'tumour': (n_slides, Gt), 'micro': (n_slides, Gm)} raw expression.
  """

  source: Any
  slides: pd.DataFrame
  grid_side: int
  feature_dim: int
  gene_names: dict[str, list[str]]
  gene_transform: str
  layout: str
  extra_masks: tuple[str, ...]
  info: dict[str, Any]
  path: pathlib.Path
  raw_genes: dict[str, np.ndarray]

  @property
  def n_genes_tumour(self) -> int:
    return len(self.gene_names["tumour"])

  @property
  def n_genes_micro(self) -> int:
    return len(self.gene_names["micro"])

  @property
  def num_patches(self) -> int:
    return self.grid_side * self.grid_side

  def __len__(self) -> int:
    return len(self.slides)

  @property
  def patients(self) -> pd.DataFrame:
    """One row per patient (first slide's labels) with `slide_indices` (list of record indices)."""
    slides = self.slides.assign(slide_index=np.arange(len(self.slides)))
    first = slides.groupby("patient_id", sort=True).first().reset_index()
    first["slide_indices"] = slides.groupby("patient_id", sort=True)["slide_index"].apply(list).values
    return first.drop(columns=["slide_id", "slide_index"])

  def genes(self, subspace: str, indices: np.ndarray | None = None) -> np.ndarray:
    """(n, G) raw float32 expression of the given slides (all when None), as in the records."""
    matrix = self.raw_genes[subspace]
    return matrix if indices is None else matrix[np.asarray(indices, np.int64)]


def open_cohort(version_dir: str | os.PathLike) -> Cohort:
  meta = builders.read_sidecar(version_dir)
  slides = pd.DataFrame(meta["table"], columns=list(features_lib.TABLE_COLUMNS))
  for col in features_lib.TABLE_COLUMNS:
    if col in features_lib.TEXT_FIELDS:
      slides[col] = slides[col].astype(str)
    elif col in features_lib.FLOAT_LABELS:
      slides[col] = slides[col].astype(np.float32)
    else:
      slides[col] = slides[col].astype(np.int64)
  source = builders.open_data_source(version_dir)
  if len(source) != len(slides):
    raise ValueError(
      f"{version_dir}: {len(source)} records but {len(slides)} table rows; delete the folder to rebuild it"
    )
  return Cohort(
    source=source,
    slides=slides,
    grid_side=int(meta["grid_side"]),
    feature_dim=int(meta["feature_dim"]),
    gene_names=meta["gene_names"],
    gene_transform=meta["gene_transform"],
    layout=meta["layout"],
    extra_masks=tuple(meta["extra_masks"]),
    info=meta["info"],
    path=pathlib.Path(version_dir),
    raw_genes=builders.read_genes(version_dir),
  )


def build_cohort(source: builders.CohortSource, data_dir: str | os.PathLike | None = None) -> Cohort:
  """Build (or reuse) the records of `source` and open them."""
  return open_cohort(builders.build(source, data_dir))
