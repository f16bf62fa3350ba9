"""The sampling op against an independent float64 NumPy grid_sample."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from smml_jax.ops import sampling


def numpy_grid_sample(image: np.ndarray, grid: np.ndarray) -> np.ndarray:
  """torch grid_sample(bilinear, zeros, align_corners=False) in float64 loops. image (H, W, C)."""
  h, w, c = image.shape
  out = np.zeros((len(grid), c))
  for p, (gx, gy) in enumerate(grid.astype(np.float64)):
    px, py = ((gx + 1) * w - 1) / 2, ((gy + 1) * h - 1) / 2
    x0, y0 = int(np.floor(px)), int(np.floor(py))
    for yi in (y0, y0 + 1):
      for xi in (x0, x0 + 1):
        if 0 <= yi < h and 0 <= xi < w:
          out[p] += (1 - abs(px - xi)) * (1 - abs(py - yi)) * image[yi, xi]
  return out


def _points(rng, n):
  inside = rng.uniform(-1.0, 1.0, (n, 2))
  outside = rng.uniform(-1.6, 1.6, (n, 2))
  # exactly on the map's outer edges, on pixel centres and on the +-1 borders
  h = w = 7
  centres = np.stack([(2 * rng.integers(0, w, n) + 1) / w - 1, (2 * rng.integers(0, h, n) + 1) / h - 1], -1)
  borders = rng.choice([-1.0, 1.0, -1 - 1 / w, 1 + 1 / w], (n, 2))
  return np.concatenate([inside, outside, centres, borders]).astype(np.float32)


@pytest.mark.parametrize("method", ["gather", "matmul"])
def test_matches_numpy_float64(method):
  rng = np.random.default_rng(0)
  image = rng.normal(size=(7, 7, 3)).astype(np.float32)
  grid = _points(rng, 40)
  got = sampling.grid_sample_2d(jnp.asarray(image)[None], jnp.asarray(grid)[None], method)[0]
  want = numpy_grid_sample(image.astype(np.float64), grid)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)


def test_far_outside_is_zero_and_corner_padding_is_per_corner():
  image = jnp.ones((1, 4, 4, 1))
  far = jnp.array([[[5.0, 5.0], [-3.0, 0.0]]])
  np.testing.assert_array_equal(sampling.grid_sample_2d(image, far)[0, :, 0], 0.0)
  # On the left edge (v = -1) the point is half a pixel left of column 0: half the weight survives.
  edge = jnp.array([[[-1.0, 0.0]]])
  np.testing.assert_allclose(sampling.grid_sample_2d(image, edge)[0, 0, 0], 0.5, rtol=1e-6)


def test_gather_and_matmul_agree_in_values_and_gradients():
  rng = np.random.default_rng(1)
  images = jnp.asarray(rng.normal(size=(3, 9, 9, 4)), jnp.float32)
  grid = jnp.asarray(rng.uniform(-1.3, 1.3, (3, 25, 2)), jnp.float32)

  def loss(method):
    return lambda im, g: jnp.sum(jnp.sin(sampling.grid_sample_2d(im, g, method)))

  for fn in (lambda m: loss(m)(images, grid), lambda m: jax.grad(loss(m), argnums=(0, 1))(images, grid)):
    for a, b in zip(jax.tree.leaves(fn("gather")), jax.tree.leaves(fn("matmul"))):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["gather", "matmul"])
def test_gradients_numerically(method):
  rng = np.random.default_rng(2)
  images = jnp.asarray(rng.normal(size=(2, 6, 6, 2)))
  # keep points away from integer pixel coordinates, where the function has kinks
  grid = jnp.asarray(rng.uniform(-1.2, 1.2, (2, 10, 2)))
  fn = lambda im, g: sampling.grid_sample_2d(im, g, method)
  with jax.enable_x64(True):
    check_grads(
      fn,
      (images.astype(jnp.float64), grid.astype(jnp.float64)),
      order=1,
      modes=("rev",),
      eps=1e-6,
      atol=1e-5,
      rtol=1e-5,
    )


def test_coordinate_gradient_uses_floor_convention_at_integer_pixels():
  # At an integer pixel coordinate torch's gradient is the forward difference image[x0+1] - image[x0].
  image = jnp.arange(5.0)[None, None, :, None] ** 2  # (1, 1, 5, 1): values 0, 1, 4, 9, 16
  grid_x = (2 * 2.0 + 1) / 5 - 1  # pixel coordinate exactly 2
  g = jax.grad(lambda gx: sampling.grid_sample_2d(image, jnp.stack([gx, 0.0])[None, None])[0, 0, 0])(grid_x)
  np.testing.assert_allclose(g, (9.0 - 4.0) * 5 / 2, rtol=1e-6)  # d px / d v = W / 2


def test_linear_sample_1d_matches_2d_column():
  rng = np.random.default_rng(3)
  seqs = jnp.asarray(rng.normal(size=(2, 11, 3)), jnp.float32)
  pts = jnp.asarray(rng.uniform(-1.2, 1.2, (2, 8)), jnp.float32)
  got = sampling.linear_sample_1d(seqs, pts)
  want = np.stack(
    [
      numpy_grid_sample(np.asarray(seqs[b])[:, None, :], np.stack([np.zeros(8), np.asarray(pts[b])], -1))
      for b in range(2)
    ]
  )
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_unknown_method_is_a_clear_error():
  with pytest.raises(ValueError, match="unknown sampler"):
    sampling.grid_sample_2d(jnp.ones((1, 2, 2, 1)), jnp.zeros((1, 1, 2)), "nearest")
