"""New inputs read from files: one slide's HDF5 feature bag and one sample's expression table."""

from __future__ import annotations

import pathlib
from typing import Optional

import h5py
import numpy as np
import pandas as pd

from smml_jax.data import genes as genes_lib
from smml_jax.data.bags import bag_to_grid
from smml_jax.data.h5features import patch_step
from smml_jax.data.errors import CohortError
from smml_jax.data.normalise import SUBSPACES
from smml_jax.evaluate.errors import InferenceError
from smml_jax.evaluate.gene_matching import align_genes
from smml_jax.evaluate.trained_run import TrainedRun

KNOWN_FEATURE_DATASETS = ("Res_feature", "features")


def read_expression(path: str | pathlib.Path) -> pd.Series:
  """One sample's expression: gene symbol -> value.

  Accepts a GDC STAR 'augmented gene counts' TSV (first line a `# gene-model` comment, columns
  gene_id, gene_name, ..., fpkm_uq_unstranded) or a two-column table (CSV/TSV, with or without a
  header) of gene symbol and value. Duplicate symbols: the first row wins.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise InferenceError(f"gene expression file {path} does not exist")
  with path.open() as f:
    first = f.readline()
  if first.startswith("#"):
    try:
      return genes_lib.read_gdc_star(path)
    except CohortError as e:
      raise InferenceError(str(e)) from e
  sep = "\t" if "\t" in first else ","
  try:
    table = pd.read_csv(path, sep=sep, header=None, dtype=str)
  except Exception as e:  # pandas' errors do not always name the file
    raise InferenceError(f"cannot read gene expression file {path}: {e}") from e
  if table.shape[1] != 2:
    raise InferenceError(
      f"gene expression file {path}: expected two columns (gene symbol, value) "
      f"or a GDC STAR TSV, got {table.shape[1]} columns"
    )
  values = pd.to_numeric(table[1], errors="coerce")
  if np.isnan(values.iloc[0]) and not np.isnan(values.iloc[1:]).all():
    table, values = table.iloc[1:], values.iloc[1:]  # a header row
  bad = np.flatnonzero(~np.isfinite(values.to_numpy(np.float64)))
  if bad.size:
    row = int(bad[0])
    raise InferenceError(
      f"gene expression file {path}, row {row + 1} (gene "
      f"{table.iloc[row, 0]!r}): value {table.iloc[row, 1]!r} is not a finite "
      "number"
    )
  series = pd.Series(values.to_numpy(np.float64), index=table[0].astype(str).str.strip())
  return series[~series.index.duplicated(keep="first")]


def read_slide_features(
  run: TrainedRun,
  path: str | pathlib.Path,
  *,
  grid_layout: Optional[str] = None,
  feature_dataset: Optional[str] = None,
  coords_dataset: Optional[str] = None,
) -> dict[str, np.ndarray]:
  """One slide's HDF5 bag laid out on the run's grid: patches, coords, tissue_mask.

  The layout and dataset names default to the run's training cohort; the feature dataset is
  otherwise auto-detected (`Res_feature` (1, N, D) of the original layout, `features` (N, D) of
  CLAM), and `coords` is used when present.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise InferenceError(f"feature file {path} does not exist")
  fmt = run.slide_format
  layout = grid_layout or fmt.grid_layout
  try:
    f = h5py.File(path, "r")
  except OSError as e:
    raise InferenceError(f"feature file {path} is not a readable HDF5 file: {e}") from e
  with f:
    names = (
      [feature_dataset]
      if feature_dataset
      else ([fmt.feature_dataset] if fmt.feature_dataset else []) + list(KNOWN_FEATURE_DATASETS)
    )
    fds = next((n for n in names if n in f), None)
    if fds is None:
      raise InferenceError(f"{path}: no feature dataset {names} (has {sorted(f.keys())})")
    feats = np.asarray(f[fds][()], np.float32)
    cds = coords_dataset or fmt.coords_dataset or "coords"
    coords = np.asarray(f[cds][()], np.float32) if cds in f else None
    step = patch_step(f[cds].attrs) if cds in f else None  # TRIDENT's patch size, as the records
  if feats.ndim == 3 and feats.shape[0] == 1:
    feats = feats[0]
  if feats.ndim != 2 or feats.shape[0] == 0 or feats.shape[1] != run.feature_dim:
    raise InferenceError(
      f"{path}: dataset {fds!r} has shape {tuple(f'{d}' for d in feats.shape)}"
      f"; the run {run.run_dir} needs (N, {run.feature_dim}) or "
      f"(1, N, {run.feature_dim}) patch features (feature dimension "
      f"{run.feature_dim})"
    )
  if not np.all(np.isfinite(feats)):
    raise InferenceError(f"{path}: dataset {fds!r} has NaN/inf values")
  if coords is not None and coords.shape != (feats.shape[0], 2):
    raise InferenceError(f"{path}: dataset {cds!r} has shape {coords.shape}, expected ({feats.shape[0]}, 2)")
  if layout == "coords" and coords is None:
    raise InferenceError(
      f"{path}: the run lays slides out by patch coordinates (grid_layout 'coords') but the file has no dataset {cds!r}"
    )
  patches, cell_coords, tissue = bag_to_grid(feats, coords, run.grid_side, layout, step)
  return {
    "patches": patches.astype(np.float32),
    "coords": cell_coords,
    "tissue_mask": tissue,
    "has_coords": np.asarray(coords is not None),
  }


def slide_example(
  run: TrainedRun,
  features_path: str | pathlib.Path,
  genes_path: str | pathlib.Path,
  *,
  slide_id: Optional[str] = None,
  patient_id: Optional[str] = None,
  missing_genes: str = "error",
  **format_options,
) -> dict[str, np.ndarray]:
  """One new slide (feature file + expression file) -> an example with RAW genes in run order.

  `slide_id` defaults to the feature file's stem, `patient_id` to the slide id.
  """
  features_path = pathlib.Path(features_path)
  example = read_slide_features(run, features_path, **format_options)
  expression = read_expression(genes_path)
  alignment = align_genes(run, list(expression.index), missing_genes, where=str(genes_path))
  values = expression.to_numpy(np.float32)
  for s in SUBSPACES:
    example[f"genes_{s}"] = alignment.apply(s, values)
  slide_id = slide_id or features_path.stem
  example["slide_id"] = np.asarray(slide_id)
  example["patient_id"] = np.asarray(patient_id or slide_id)
  return example
