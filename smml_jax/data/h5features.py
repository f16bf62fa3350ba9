"""Per-slide HDF5 feature files: checked cheaply up front, read and validated per slide.

The feature dimension D is read from the files (`infer_feature_dim`), never typed in: UNI 1024,
UNI2 1536, CONCH 768, Virchow2 2560, GigaPath 1536, ResNet50-trunc 1024. TRIDENT stores the patch
size on the coords dataset (`patch_size_level0`, `patch_size`, `overlap`); `patch_step` turns it
into the stride between neighbouring patches so `grid_layout: coords` places them on the grid.
"""

from __future__ import annotations

import os
import pathlib
from typing import Mapping, Sequence

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


def _open(path: pathlib.Path) -> h5py.File:
  if not path.is_file():
    raise CohortError(f"feature file {path} does not exist")
  try:
    return h5py.File(path, "r")
  except OSError as e:
    raise CohortError(f"feature file {path} is not a readable HDF5 file: {e}") from e


def infer_feature_dim(paths: Sequence[str | os.PathLike], feature_dataset: str, expected: int | None = None) -> int:
  """D shared by every file's (N, D) / (1, N, D) dataset; a file that differs is an error.

  Args:
    paths: the cohort's feature files (at least one).
    feature_dataset: the dataset holding the patch features.
    expected: a D the spec states (`feature_dim`); None reads it from the first file.
  """
  dim, first = expected, None
  for path in map(pathlib.Path, paths):
    with _open(path) as f:
      raw = _dataset(f, feature_dataset, path).shape
    shape = _squeeze_bag(raw)
    if shape is None:
      raise CohortError(f"{path}: dataset {feature_dataset!r} has shape {raw}, expected (N, D) or (1, N, D)")
    if dim is None:
      dim, first = shape[1], path
    elif shape[1] != dim:
      source = f"{first} has D = {dim}" if first is not None else f"the spec's feature_dim is {dim}"
      raise CohortError(
        f"{path}: dataset {feature_dataset!r} has shape {raw}, expected (N, "
        f"{dim}) since {source}; every slide of a cohort needs the same encoder"
      )
  if dim is None:
    raise CohortError("no feature file to read the feature dimension from")
  return int(dim)


def patch_step(attrs: Mapping) -> float | None:
  """The level-0 stride between neighbouring patches from TRIDENT's coords attributes, or None.

  TRIDENT's coords are level-0 pixels of each patch's top-left corner; patches of
  `patch_size_level0` pixels overlapping by `overlap` (in patch-level pixels) are
  patch_size_level0 * (patch_size - overlap) / patch_size apart.
  """
  if "patch_size_level0" not in attrs:
    return None
  size0 = float(attrs["patch_size_level0"])
  size = float(attrs.get("patch_size", 0) or 0)
  overlap = float(attrs.get("overlap", 0) or 0)
  step = size0 * (size - overlap) / size if size > 0 else size0
  return step if step > 0 else None


def check_h5(
  path: str | os.PathLike,
  feature_dataset: str,
  feature_dim: int,
  coords_dataset: str | None = None,
  need_coords: bool = False,
) -> int:
  """Checks existence, dataset names and shapes without reading the data; returns N."""
  path = pathlib.Path(path)
  with _open(path) as f:
    shape = _squeeze_bag(_dataset(f, feature_dataset, path).shape)
    if shape is None or shape[1] != feature_dim or shape[0] == 0:
      raise CohortError(
        f"{path}: dataset {feature_dataset!r} has shape "
        f"{f[feature_dataset].shape}, expected (N, {feature_dim}) or "
        f"(1, N, {feature_dim}) with N >= 1"
      )
    if coords_dataset is not None and (need_coords or coords_dataset in f):
      cshape = _dataset(f, coords_dataset, path).shape
      if tuple(cshape) != (shape[0], 2):
        raise CohortError(
          f"{path}: dataset {coords_dataset!r} has shape {cshape}, expected "
          f"({shape[0]}, 2) to match {feature_dataset!r}"
        )
    return shape[0]


def read_h5_grid(
  path: str | os.PathLike,
  feature_dataset: str,
  feature_dim: int,
  grid_side: int,
  layout: str = "sample",
  coords_dataset: str | None = None,
) -> dict[str, np.ndarray]:
  """One slide's bag laid out on the grid: patches, coords, tissue_mask (see bags.bag_to_grid).

  With `grid_layout: coords`, a `patch_size_level0` attribute on the coords dataset (TRIDENT) sets
  the lattice stride; without it the smallest gap between positions does.
  """
  path = pathlib.Path(path)
  check_h5(path, feature_dataset, feature_dim, coords_dataset, need_coords=layout == "coords")
  with h5py.File(path, "r") as f:
    feats = np.asarray(f[feature_dataset][()], np.float32).reshape(-1, feature_dim)
    has_coords = coords_dataset is not None and coords_dataset in f
    coords = np.asarray(f[coords_dataset][()], np.float32) if has_coords else None
    step = patch_step(f[coords_dataset].attrs) if has_coords else None
  if not np.all(np.isfinite(feats)):
    raise CohortError(
      f"{path}: dataset {feature_dataset!r} has {int((~np.isfinite(feats)).sum())}"
      " NaN/inf values; expected finite features"
    )
  if coords is not None and not np.all(np.isfinite(coords)):
    raise CohortError(f"{path}: dataset {coords_dataset!r} has NaN/inf values")
  patches, cell_coords, mask = bag_to_grid(feats, coords, grid_side, layout, step)
  return {"patches": patches, "coords": cell_coords, "tissue_mask": mask}
