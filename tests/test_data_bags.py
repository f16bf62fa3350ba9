"""Bags of any length onto the grid: the original's tile / subsample rule, and by coordinates."""

from __future__ import annotations

import numpy as np
import pytest

from smml_jax.data import bags


def _original_rule(num_patches: int, max_num: int) -> list[int]:
  """The original dataset's fixdim loop (read_img), transcribed: which patch fills each slot."""
  if num_patches <= max_num:
    times, remaining = int(np.floor(max_num / num_patches)), max_num % num_patches
    order = list(range(num_patches)) * times
    return order + list(range(num_patches))[:remaining]
  return [int(np.around(i * (num_patches / max_num))) for i in range(max_num)]


@pytest.mark.parametrize("n", [1, 3, 7, 16, 17, 40, 2501])
def test_sample_indices_follow_the_original(n):
  target = 16 if n < 2501 else 2500
  np.testing.assert_array_equal(bags.sample_indices(n, target), _original_rule(n, target))


def test_sample_layout_without_coords_uses_grid_positions():
  feats = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
  patches, coords, mask = bags.bag_to_grid(feats, None, 3)
  np.testing.assert_array_equal(patches, feats[_original_rule(10, 9)])
  np.testing.assert_array_equal(coords, bags.grid_positions(3))
  assert mask.all()


def test_coords_layout_shrinks_large_slides_keeping_neighbours():
  rng = np.random.default_rng(0)
  xs, ys = np.meshgrid(np.arange(20), np.arange(10))
  coords = np.stack([xs.ravel(), ys.ravel()], 1) * 512.0 + 77.0
  feats = rng.standard_normal((len(coords), 4)).astype(np.float32)
  patches, cell_coords, mask = bags.coords_layout(feats, coords, 5)
  # Both axes shrink by 5 / 20: cells are 4 x 4 lattice blocks, averaged.
  for r in range(5):
    for c in range(5):
      sel = (xs.ravel() // 4 == c) & (ys.ravel() // 4 == r)
      k = r * 5 + c
      assert mask[k] == sel.any()
      if sel.any():
        np.testing.assert_allclose(patches[k], feats[sel].mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(cell_coords[k], coords[sel].mean(0))
      else:
        assert (patches[k] == 0).all() and (cell_coords[k] == -1).all()
  # Neighbouring cells hold neighbouring tissue: x grows along a row, y down a column.
  grid = cell_coords.reshape(5, 5, 2)
  occupied = mask.reshape(5, 5)
  assert np.all(np.diff(grid[occupied[:, 0], :, 0][:, :], axis=1)[:, :] > 0)
  assert np.all(np.diff(grid[:2, :, 1], axis=0) > 0)


def test_coords_layout_needs_coords():
  with pytest.raises(ValueError, match="needs patch coordinates"):
    bags.bag_to_grid(np.zeros((4, 2)), None, 2, layout="coords")
  with pytest.raises(ValueError, match="grid_layout"):
    bags.bag_to_grid(np.zeros((4, 2)), None, 2, layout="spiral")
