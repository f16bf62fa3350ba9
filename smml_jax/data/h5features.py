"""Per-slide HDF5 feature files: checked cheaply up front, read and validated per slide."""

from __future__ import annotations

import os
import pathlib

import h5py
import numpy as np

from smml_jax.data.bags import bag_to_grid
from smml_jax.data.errors import CohortError


def _dataset(f: h5py.File, name: str, path: pathlib.Path) -> h5py.Dataset:
  if name not in f:
    raise CohortError(f"{path}: no dataset {name!r} (has {sorted(f.keys())})")
  return f[name]


def _squeeze_bag(shape: tuple[int, ...]) -> tuple[int, int] | None:
  """(N, D) of a (N, D) or (1, N, D) dataset shape, else None."""
  if len(shape) == 3 and shape[0] == 1:
    shape = shape[1:]
  return (int(shape[0]), int(shape[1])) if len(shape) == 2 else None


def check_h5(path: str | os.PathLike, feature_dataset: str, feature_dim: int,
             coords_dataset: str | None = None, need_coords: bool = False) -> int:
  """Checks existence, dataset names and shapes without reading the data; returns N."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise CohortError(f"feature file {path} does not exist")
  try:
    f = h5py.File(path, "r")
  except OSError as e:
    raise CohortError(f"feature file {path} is not a readable HDF5 file: {e}") from e
  with f:
    shape = _squeeze_bag(_dataset(f, feature_dataset, path).shape)
    if shape is None or shape[1] != feature_dim or shape[0] == 0:
      raise CohortError(f"{path}: dataset {feature_dataset!r} has shape "
                        f"{f[feature_dataset].shape}, expected (N, {feature_dim}) or "
                        f"(1, N, {feature_dim}) with N >= 1")
    if coords_dataset is not None and (need_coords or coords_dataset in f):
      cshape = _dataset(f, coords_dataset, path).shape
      if tuple(cshape) != (shape[0], 2):
        raise CohortError(f"{path}: dataset {coords_dataset!r} has shape {cshape}, expected "
                          f"({shape[0]}, 2) to match {feature_dataset!r}")
    return shape[0]


def read_h5_grid(path: str | os.PathLike, feature_dataset: str, feature_dim: int, grid_side: int,
                 layout: str = "sample",
                 coords_dataset: str | None = None) -> dict[str, np.ndarray]:
  """One slide's bag laid out on the grid: patches, coords, tissue_mask (see bags.bag_to_grid)."""
  path = pathlib.Path(path)
  check_h5(path, feature_dataset, feature_dim, coords_dataset, need_coords=layout == "coords")
  with h5py.File(path, "r") as f:
    feats = np.asarray(f[feature_dataset][()], np.float32).reshape(-1, feature_dim)
    coords = (np.asarray(f[coords_dataset][()], np.float32)
              if coords_dataset is not None and coords_dataset in f else None)
  if not np.all(np.isfinite(feats)):
    raise CohortError(f"{path}: dataset {feature_dataset!r} has {int((~np.isfinite(feats)).sum())}"
                      " NaN/inf values; expected finite features")
  if coords is not None and not np.all(np.isfinite(coords)):
    raise CohortError(f"{path}: dataset {coords_dataset!r} has NaN/inf values")
  patches, cell_coords, mask = bag_to_grid(feats, coords, grid_side, layout)
  return {"patches": patches, "coords": cell_coords, "tissue_mask": mask}
