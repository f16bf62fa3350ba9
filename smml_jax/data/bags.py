"""Bags of any length N -> a fixed grid of grid_side ** 2 cells.

`sample` (the original's fixdim rule): a bag smaller than the grid is tiled (repeated whole, then
its first `remainder` patches); a larger one is subsampled at evenly spaced indices
round(i * N / M), i = 0..M-1. `coords`: patches are placed by their slide position so neighbouring
grid cells hold neighbouring tissue (several patches falling in one cell are averaged; cells without
tissue are zero and flagged False in `tissue_mask`).
"""

from __future__ import annotations

import numpy as np

GRID_LAYOUTS = ("sample", "coords")


def sample_indices(n: int, target: int) -> np.ndarray:
  """(target,) indices into a bag of n patches, by the original's tile / subsample rule."""
  if n <= 0:
    raise ValueError(f"cannot lay out an empty bag (0 patches) on {target} cells")
  if n <= target:
    times, remainder = divmod(target, n)
    return np.concatenate([np.tile(np.arange(n), times), np.arange(remainder)]).astype(np.int64)
  return np.around(np.arange(target) * (n / target)).astype(np.int64)


def _lattice(values: np.ndarray, step: float | None = None) -> np.ndarray:
  """Integer lattice index of each coordinate (patches sit on a regular step).

  Without `step` (the patch stride in the coordinates' units, e.g. TRIDENT's patch_size_level0)
  the smallest gap between distinct values is taken as the stride.
  """
  unique = np.unique(values)
  if step is None:
    if unique.size == 1:
      return np.zeros(values.shape, np.int64)
    step = np.min(np.diff(unique))
  return np.round((values - unique[0]) / step).astype(np.int64)


def coords_layout(
  features: np.ndarray, coords: np.ndarray, grid_side: int, step: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Place patches on the grid by slide position.

  Args:
    features: (N, D) patch features.
    coords: (N, 2) slide positions (x, y) of the patches.
    grid_side: S; the grid has S * S cells, row-major (row = y, column = x).
    step: the patch stride in coordinate units (None: the smallest gap between positions).

  Returns:
    patches (S*S, D), cell coords (S*S, 2) = mean slide position of the patches in each cell
    (-1 for empty cells), tissue_mask (S*S,) bool.
  """
  ix, iy = _lattice(coords[:, 0], step), _lattice(coords[:, 1], step)
  extent = max(int(ix.max()) + 1, int(iy.max()) + 1)
  if extent <= grid_side:  # fits: centre the tissue on the grid, one patch per cell
    col = ix + (grid_side - (int(ix.max()) + 1)) // 2
    row = iy + (grid_side - (int(iy.max()) + 1)) // 2
  else:  # shrink both axes by the same factor so the tissue keeps its shape
    scale = grid_side / extent
    col = np.minimum((ix * scale).astype(np.int64), grid_side - 1)
    row = np.minimum((iy * scale).astype(np.int64), grid_side - 1)
  cell = row * grid_side + col
  n_cells = grid_side * grid_side
  counts = np.bincount(cell, minlength=n_cells).astype(np.float64)
  sums = np.zeros((n_cells, features.shape[1]), np.float64)
  np.add.at(sums, cell, features.astype(np.float64))
  pos = np.zeros((n_cells, 2), np.float64)
  np.add.at(pos, cell, coords.astype(np.float64))
  occupied = counts > 0
  denom = np.maximum(counts, 1.0)[:, None]
  patches = (sums / denom).astype(features.dtype)
  cell_coords = np.where(occupied[:, None], pos / denom, -1.0).astype(np.float32)
  return patches, cell_coords, occupied


def grid_positions(grid_side: int) -> np.ndarray:
  """(S*S, 2) float32 (x, y) = (column, row) of each row-major grid cell."""
  rows, cols = np.divmod(np.arange(grid_side * grid_side), grid_side)
  return np.stack([cols, rows], axis=1).astype(np.float32)


def bag_to_grid(
  features: np.ndarray, coords: np.ndarray | None, grid_side: int, layout: str = "sample", step: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """A bag (N, D) [+ coords (N, 2)] -> (patches (S*S, D), coords (S*S, 2), tissue_mask (S*S,)).

  `step` (layout `coords` only): the patch stride in coordinate units, see coords_layout.
  """
  if layout not in GRID_LAYOUTS:
    raise ValueError(f"grid_layout must be one of {GRID_LAYOUTS}, got {layout!r}")
  if layout == "coords":
    if coords is None:
      raise ValueError("grid_layout='coords' needs patch coordinates, but the bag has none")
    return coords_layout(features, coords, grid_side, step)
  idx = sample_indices(features.shape[0], grid_side * grid_side)
  cell_coords = grid_positions(grid_side) if coords is None else coords[idx].astype(np.float32)
  return features[idx], cell_coords, np.ones(idx.shape, np.bool_)
