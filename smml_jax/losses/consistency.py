"""Gene-guided consistency loss ("BatchLoss", README §3).

Samples whose gene embeddings are similar should get similar deformable sampling grids:
the row-normalised Gram matrix of the gene embeddings is pulled towards the mean
row-normalised Gram matrix of the grids.
"""

from __future__ import annotations

import functools
from typing import Literal, Optional

import jax
import jax.numpy as jnp

_HIGHEST = jax.lax.Precision.HIGHEST


def _row_normalised_gram(x: jax.Array, valid: jax.Array, eps: float) -> jax.Array:
  """(..., N, D) -> (..., N, N) Gram x x^T with each row divided by its L2 norm.

  Rows that are not `valid` (padding; their x rows are zero) get a 0 row without NaN.
  With eps = 0 a valid all-zero row gives NaN, as in the reference; eps > 0 divides by
  max(norm, eps) instead.
  """
  gram = jnp.einsum("...nd,...md->...nm", x, x, precision=_HIGHEST)
  sq = jnp.sum(gram * gram, axis=-1, keepdims=True)
  row_valid = valid[:, None]
  sq = jnp.where(row_valid, sq, 1.0)  # before the sqrt, so padded rows have finite gradient
  if eps > 0:
    sq = jnp.maximum(sq, eps * eps)
  return gram / jnp.sqrt(sq)


@functools.partial(jax.jit, static_argnames=("mode", "eps"))
def batch_consistency_loss(
  gene_embeddings: jax.Array,
  grids: jax.Array,
  *,
  mode: Literal["reference", "per_sample"] = "reference",
  mask: Optional[jax.Array] = None,
  eps: float = 0.0,
) -> jax.Array:
  """The consistency matrix BL (N, N); the training loss is its sum.

  Steps (N samples, G offset groups, D = C * S * S grid values per group):
    1. Ŝ = row-normalised O O^T, O = gene embeddings flattened per sample.
    2. Grid "items" V_a (N, D), a = 0..G-1 (see `mode`).
    3. M = mean_a row-normalised V_a V_a^T.
    4. BL = (Ŝ - M)^2 / N.

  `mode`:
    'reference' (default, for parity) copies the original's memory-order reshape: grids
      (N*G, D) are viewed as (G, N, D), so item a row n is grid row a*N + n, i.e. sample
      (a*N + n) // G, group (a*N + n) % G. This mixes samples and groups: for N = 2, item a
      holds two groups of ONE sample, so "similarity between samples" is really a
      similarity between groups of the same sample (or, for N = G, between the groups).
    'per_sample' is the evidently intended computation: item g is the (N, D) matrix of
      group g of every sample n, so each T_g compares the samples' grids group by group.

  Gene embeddings may be (N, H) or token-repeated (N, k, H) as the original feeds its
  omic_rep (N, 2500, 128): O is flattened to (N, k*H), and for repeated tokens the factor
  k cancels in the row normalisation, so (N, H) gives the same result much cheaper.

  Padding: with `mask` (N,) the result equals the reference computed on the real examples
  only (their order kept; divisor N' = number of real examples), scattered into the (N, N)
  matrix, with zero rows/columns for padded examples. This is done without dynamic shapes:
  padded rows are zeroed and, in 'reference' mode, the real samples' grid rows are gathered
  with the reshape indices of an N'-sample batch (a*N' + n). It is jit-friendly.

  Under `jax.jit` with batch-sharded inputs the jnp ops act on the global arrays, so N is
  the global batch, as the original's all-gather (rank-major = global batch order) gives.

  Args:
    gene_embeddings: (N, H) or (N, k, H) float.
    grids: (N*G, C, S, S) (or any (N*G, ...)) un-normalised sampling grids, rows n*G + g.
    mode: 'reference' or 'per_sample' (above).
    mask: (N,) bool, True for real examples; None = all real.
    eps: 0 (reference: a zero gene embedding gives NaN) or a floor for the row norms.

  Returns:
    (N, N) float32 consistency matrix (N = 1 gives 0, up to ~1e-16 round-off).
  """
  if mode not in ("reference", "per_sample"):
    raise ValueError(f"batch_consistency_loss: mode must be 'reference' or 'per_sample', got {mode!r}")
  omic = jnp.asarray(gene_embeddings, jnp.float32)
  if omic.ndim not in (2, 3):
    raise ValueError(f"batch_consistency_loss: gene_embeddings must be (N, H) or (N, k, H), got shape {omic.shape}")
  n = omic.shape[0]
  grids = jnp.asarray(grids, jnp.float32)
  if grids.shape[0] % n:
    raise ValueError(
      f"batch_consistency_loss: grids have {grids.shape[0]} rows, expected a "
      f"multiple of the batch size N = {n} (rows n*G + g)"
    )
  groups = grids.shape[0] // n
  omic = omic.reshape(n, -1)
  per_group = grids.reshape(n, groups, -1)  # (N, G, D)

  valid = jnp.ones((n,), bool) if mask is None else jnp.asarray(mask, bool).reshape(n)
  n_real = jnp.sum(valid.astype(jnp.int32))
  # Compact order: real examples first, in their original order.
  order = jnp.argsort(~valid, stable=True)
  rank = jnp.argsort(order)  # rank[i] = position of example i in compact order
  compact_valid = jnp.arange(n) < n_real
  omic_c = jnp.where(compact_valid[:, None], omic[order], 0.0)
  grid_c = per_group[order]  # (N, G, D)

  if mode == "reference":
    flat = grid_c.reshape(n * groups, -1)
    idx = jnp.arange(groups)[:, None] * n_real + jnp.arange(n)[None, :]  # (G, N)
    idx = jnp.where(compact_valid[None, :], idx, 0)
    items = flat[idx]  # (G, N, D)
  else:
    items = jnp.swapaxes(grid_c, 0, 1)  # (G, N, D)
  items = jnp.where(compact_valid[None, :, None], items, 0.0)

  s_hat = _row_normalised_gram(omic_c, compact_valid, eps)
  m = jnp.mean(jax.vmap(lambda v: _row_normalised_gram(v, compact_valid, eps))(items), axis=0)
  pair_valid = compact_valid[:, None] & compact_valid[None, :]
  bl_c = jnp.where(pair_valid, (s_hat - m) ** 2, 0.0) / jnp.maximum(n_real, 1).astype(jnp.float32)
  return bl_c[rank][:, rank]
