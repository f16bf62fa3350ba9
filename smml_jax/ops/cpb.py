"""Continuous relative-position bias (CPB, SwinV2 / lucidrains' deformable attention).

An MLP on sign-log distances between query positions and (learned, differentiable) sampled key
positions gives one additive attention logit per (query, key, head).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

# One (kernel, bias) pair per layer: kernels (in, out), ReLU between layers, none after the last.
CPBParams = Sequence[tuple[jax.Array, jax.Array]]


def sign_log(d: jax.Array) -> jax.Array:
  """sign(d) * log(1 + |d|), with gradient 1 / (1 + |d|) and 0 at d = 0 exactly."""
  return jnp.sign(d) * jnp.log1p(jnp.abs(d))


def query_positions(side: int, ndim: int, geometry: str = "reference") -> jax.Array:
  """Normalised query positions of a row-major lattice, x first.

  Args:
    side: lattice side (2D: side x side tokens) or sequence length (1D).
    ndim: 1 or 2.
    geometry: "reference" uses the align_corners=True frame (2i / (side - 1) - 1), as the original;
      "consistent" uses pixel centres of the align_corners=False frame the keys are sampled in,
      (2i + 1) / side - 1.

  Returns:
    (side ** ndim, ndim) positions; 2D rows are (x, y) = (column, row) of token r * side + c.
  """
  idx = jnp.arange(side, dtype=jnp.float32)
  if geometry == "reference":
    axis = 2.0 * idx / (side - 1) - 1.0
  elif geometry == "consistent":
    axis = (2.0 * idx + 1.0) / side - 1.0
  else:
    raise ValueError(f"unknown CPB geometry {geometry!r}; expected 'reference' or 'consistent'")
  if ndim == 1:
    return axis[:, None]
  rows, cols = jnp.meshgrid(axis, axis, indexing="ij")
  return jnp.stack([cols.reshape(-1), rows.reshape(-1)], axis=-1)


def dense_layer(h: jax.Array, layer: tuple[jax.Array, jax.Array]) -> jax.Array:
  """h (P, fan_in) @ kernel + bias in h's dtype; fan-in <= 2 as broadcast multiply-adds.

  XLA's CPU and GPU backends run a K = 1 or 2 contraction far slower than the equivalent
  elementwise multiply-adds.
  """
  kernel, bias = layer
  kernel = kernel.astype(h.dtype)
  if kernel.shape[0] <= 2:
    return bias.astype(h.dtype) + sum(h[:, d : d + 1] * kernel[d] for d in range(kernel.shape[0]))
  return h @ kernel + bias.astype(h.dtype)


def cpb_mlp(t: jax.Array, params: CPBParams) -> jax.Array:
  """The CPB MLP on transformed distances t (..., ndim) -> (..., heads_per_group).

  Runs on a flat (positions, features) view as plain 2D matmuls, which XLA's CPU and GPU
  backends both run far faster than the same contraction over 5 batch dimensions.
  """
  lead = t.shape[:-1]
  h = t.reshape(-1, t.shape[-1])
  for i, layer in enumerate(params):
    h = dense_layer(h, layer)
    if i < len(params) - 1:
      h = jax.nn.relu(h)
  return h.reshape(*lead, h.shape[-1])


def relative_position_bias(
  pos_q: jax.Array, pos_k: jax.Array, params: CPBParams, compute_dtype=jnp.float32
) -> jax.Array:
  """Bias logits for every (query, key) pair.

  Args:
    pos_q: (T, D) query positions.
    pos_k: (B, G, M, D) sampled key positions per batch row and offset group.
    params: CPB MLP parameters; the last layer has `o` = heads per group outputs.
    compute_dtype: dtype of the MLP's activations (the distances are formed in float32 and the
      parameters stay float32, cast at use).

  Returns:
    (B, G * o, T, M) bias in `compute_dtype`, head h = g * o + j (group-major), as the
    original's rearrange.
  """
  delta, t = pair_inputs(pos_q, pos_k, compute_dtype)
  b, g, n, m, _ = delta.shape
  return bias_to_heads(cpb_mlp(t, params), (b, g, n, m))


def pair_inputs(pos_q: jax.Array, pos_k: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
  """delta = pos_q - pos_k (B, G, T, M, D) in float32 and the MLP input sign_log(delta) as a flat
  (P, D) array in `dtype`, P = B * G * T * M."""
  delta = pos_q[None, None, :, None, :] - pos_k[:, :, None, :, :]
  return delta, sign_log(delta).astype(dtype).reshape(-1, delta.shape[-1])


def bias_to_heads(bias: jax.Array, lead: tuple[int, int, int, int]) -> jax.Array:
  """(P, o) MLP outputs -> (B, G * o, T, M), head h = g * o + j (group-major), as the original's
  rearrange; lead = (B, G, T, M)."""
  b, g, t, m = lead
  o = bias.shape[-1]
  return bias.reshape(b, g, t, m, o).transpose(0, 1, 4, 2, 3).reshape(b, g * o, t, m)
