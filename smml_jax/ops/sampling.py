"""Bilinear (2D) and linear (1D) sampling with `torch.nn.functional.grid_sample` semantics.

Semantics: bilinear, zero padding, align_corners=False. A normalised coordinate v in [-1, 1] spans
the outer *edges* of a map of W pixels, so its pixel coordinate is p = ((v + 1) * W - 1) / 2.
Each of the (up to) four neighbours floor(p), floor(p) + 1 contributes with weight
(1 - |p - i|) per axis, and a neighbour outside the map contributes zero (per corner, not per point).
The gradient w.r.t. the coordinates uses the floor convention (one-sided at integer coordinates), as
torch does.

Two implementations of the same function:
* `gather`: four gathers per point; cheap in FLOPs, irregular memory access.
* `matmul`: separable one-hot interpolation weights and two contractions (no gathers), friendlier to
  tensor cores and TPUs when there are few points on a small map, as in deformable attention.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def unnormalise(v: jax.Array, size: int) -> jax.Array:
  """Pixel coordinate of a normalised coordinate under align_corners=False."""
  return ((v + 1.0) * size - 1.0) / 2.0


def _corner_weights(p: jax.Array):
  """Lower neighbour index and the two interpolation weights along one axis."""
  p0 = jnp.floor(p)
  frac = p - p0
  return p0.astype(jnp.int32), 1.0 - frac, frac


def bilinear_gather(image: jax.Array, py: jax.Array, px: jax.Array) -> jax.Array:
  """Samples one channel-last image at pixel coordinates by gathering four corners.

  Args:
    image: (H, W, C).
    py, px: (P,) row and column pixel coordinates (any float values).

  Returns:
    (P, C) samples; zero padding outside [0, H-1] x [0, W-1], per corner.
  """
  h, w = image.shape[:2]
  y0, wy0, wy1 = _corner_weights(py)
  x0, wx0, wx1 = _corner_weights(px)
  out = jnp.zeros((py.shape[0], image.shape[-1]), image.dtype)
  for dy, wy in ((0, wy0), (1, wy1)):
    for dx, wx in ((0, wx0), (1, wx1)):
      yi, xi = y0 + dy, x0 + dx
      inside = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
      vals = image[jnp.clip(yi, 0, h - 1), jnp.clip(xi, 0, w - 1)]
      weight = jnp.where(inside, wy * wx, 0.0).astype(image.dtype)
      out = out + weight[:, None] * vals
  return out


def interpolation_weights(p: jax.Array, size: int, dtype=jnp.float32) -> jax.Array:
  """(P, size) linear-interpolation weights along one axis (zero outside the map)."""
  p0, w0, w1 = _corner_weights(p)
  cells = jnp.arange(size, dtype=jnp.int32)
  lower = (cells[None, :] == p0[:, None]).astype(dtype)
  upper = (cells[None, :] == p0[:, None] + 1).astype(dtype)
  return lower * w0[:, None].astype(dtype) + upper * w1[:, None].astype(dtype)


def bilinear_matmul(image: jax.Array, py: jax.Array, px: jax.Array) -> jax.Array:
  """Same function as `bilinear_gather`, as two contractions with separable weights.

  Args:
    image: (H, W, C).
    py, px: (P,) pixel coordinates.

  Returns:
    (P, C).
  """
  h, w = image.shape[:2]
  wy = interpolation_weights(py, h, image.dtype)
  wx = interpolation_weights(px, w, image.dtype)
  rows = jnp.einsum("pw,hwc->phc", wx, image)
  return jnp.einsum("ph,phc->pc", wy, rows)


SAMPLERS = {"gather": bilinear_gather, "matmul": bilinear_matmul}


def grid_sample_2d(images: jax.Array, grid: jax.Array, method: str = "gather") -> jax.Array:
  """Batched `grid_sample` (bilinear, zeros, align_corners=False), channel-last.

  Args:
    images: (B, H, W, C).
    grid: (B, P, 2) normalised coordinates, [..., 0] = x (column), [..., 1] = y (row).
    method: "gather" or "matmul" (same values and gradients).

  Returns:
    (B, P, C).
  """
  if method not in SAMPLERS:
    raise ValueError(f"unknown sampler {method!r}; expected one of {sorted(SAMPLERS)}")
  h, w = images.shape[1:3]
  px = unnormalise(grid[..., 0], w)
  py = unnormalise(grid[..., 1], h)
  return jax.vmap(SAMPLERS[method])(images, py, px)


def linear_sample_1d(seqs: jax.Array, points: jax.Array, method: str = "gather") -> jax.Array:
  """1D `grid_sample` on sequences (a W = 1 image), align_corners=False, zero padding.

  Args:
    seqs: (B, N, C).
    points: (B, P) normalised coordinates in [-1, 1] along the sequence.
    method: "gather" or "matmul".

  Returns:
    (B, P, C).
  """
  images = seqs[:, :, None, :]
  grid = jnp.stack([jnp.zeros_like(points), points], axis=-1)
  return grid_sample_2d(images, grid, method)
