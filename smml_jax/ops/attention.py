"""Attention with a continuous relative-position bias over deformably sampled keys.

This is the model's hot spot: the CPB MLP runs on every (query, key) pair of every head, a tensor
of B * G * N * M positions with 32-wide hidden activations. Two implementations of one function:

* `reference`: materialises the whole (B, H, N, M) bias and its hidden activations, as the original.
* `chunked`: walks over tiles of queries with `lax.map`, each tile under `jax.checkpoint`, so only
  one tile's activations are ever alive and the backward pass recomputes them instead of storing
  B * G * N * M * hidden floats.
* `fused`: the same tiles, each with the hand-written backward pass of `fused_attention`, which
  keeps the probabilities and one bit per hidden unit instead of recomputing the MLP.
* `native`: the bias from the CPU kernels of `native_cpb` (the MLP never leaves registers and L1;
  one bit per hidden unit kept), the attention around it in XLA over all queries at once.
* `pallas`: one Pallas kernel per (batch row, offset group, query tile) evaluating the bias MLP
  inside the attention tile, with a hand-written recomputing backward (`pallas_attention`); compiled
  for TPU (Mosaic) and CUDA GPUs (Triton, `pallas_attention_gpu`), interpreted elsewhere (tests).
* `auto`: by the platform the computation is compiled for (`ops/dispatch.py`): `native` on the CPU
  where it is available (the original's MLP shape, float32, a C++ compiler), else `fused`.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from smml_jax.ops import dispatch, native_cpb, pallas_attention
from smml_jax.ops.cpb import CPBParams, relative_position_bias
from smml_jax.ops.fused_attention import attend_tile

IMPLEMENTATIONS = dispatch.ATTENTION_IMPLEMENTATIONS


def _attend_block(q, k, v, pos_q, pos_k, cpb_params, valid, dropout_rate, rng, softmax_dtype, cpb_dtype):
  """Attention for one block of queries.

  q (B, H, T, Dh), k/v (B, H, M, Dh), pos_q (T, D), pos_k (B, G, M, D), valid (T,) bool.
  Returns out (B, H, T, Dh) and the attention mass per key summed over valid queries (B, H, M).
  """
  bias = relative_position_bias(pos_q, pos_k, cpb_params, compute_dtype=cpb_dtype)
  return _attend_with_bias(q, k, v, bias, valid, dropout_rate, rng, softmax_dtype)


def _attend_with_bias(q, k, v, bias, valid, dropout_rate, rng, softmax_dtype):
  """softmax(q k^T + bias) v and the key mass, bias (B, H, T, M). The logits q.k are accumulated
  in `softmax_dtype` and the bias is added in it, so with bf16 q/k only the matmul inputs are
  rounded."""
  sim = jnp.einsum("bhtd,bhmd->bhtm", q, k, preferred_element_type=softmax_dtype)
  attn = jax.nn.softmax(sim + bias.astype(softmax_dtype), axis=-1)
  mass = jnp.einsum("bhtm,t->bhm", attn, valid.astype(attn.dtype))
  if rng is not None and dropout_rate > 0.0:
    keep = jax.random.bernoulli(rng, 1.0 - dropout_rate, attn.shape)
    attn = jnp.where(keep, attn / (1.0 - dropout_rate), 0.0)
  out = jnp.einsum("bhtm,bhmd->bhtd", attn.astype(v.dtype), v)
  return out, mass


def cpb_attention(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  pos_q: jax.Array,
  pos_k: jax.Array,
  cpb_params: CPBParams,
  *,
  dropout_rate: float = 0.0,
  dropout_rng: Optional[jax.Array] = None,
  implementation: str = "chunked",
  query_tile: int = 256,
  softmax_dtype=jnp.float32,
  cpb_dtype=jnp.float32,
  platform: Optional[str] = None,
) -> tuple[jax.Array, jax.Array]:
  """softmax(q k^T + CPB(pos_q - pos_k)) v, with attention dropout when `dropout_rng` is given.

  Args:
    q: (B, H, N, Dh) queries, already scaled.
    k, v: (B, H, M, Dh) keys and values at the M sampled points.
    pos_q: (N, D) query positions (D = 1 or 2).
    pos_k: (B, G, M, D) sampled key positions per offset group (H = G * heads per group).
    cpb_params: CPB MLP parameters.
    dropout_rate: attention-probability dropout (train mode only).
    dropout_rng: PRNG key; None disables dropout.
    implementation: "reference" (materialised), "chunked" (query tiles, rematerialised),
      "fused" (query tiles, hand-written backward), "native" (CPU kernels for the bias),
      "pallas" (TPU / GPU kernels, `pallas_attention`) or "auto" (by `platform`: "native" on the CPU
      where available, else "fused").
    query_tile: queries per tile for "chunked", "fused" and "pallas".
    softmax_dtype: dtype of the logits entering the softmax (float32 under mixed precision).
    cpb_dtype: dtype of the CPB MLP's hidden layers (its distances and output stay float32).
    platform: the platform the computation is compiled for ('cpu', 'gpu', 'tpu'); None resolves
      "auto" per lowering platform with `jax.lax.platform_dependent`.

  Returns:
    out (B, H, N, Dh) and the attention mass each sampled key receives, summed over queries,
    (B, H, M), before dropout.
  """
  native_supported = (
    implementation in ("auto", "native")
    and platform in (None, *dispatch.NATIVE_PLATFORMS)
    and native_cpb.available(cpb_params, cpb_dtype)
  )
  implementation = dispatch.resolve_attention(implementation, platform, native_supported=native_supported)
  if implementation == "native" and not native_supported:
    raise ValueError(
      "attention implementation 'native' is unavailable: " + native_cpb.why_unavailable(cpb_params, cpb_dtype)
    )
  run = lambda impl: (
    lambda *a: _cpb_attention(
      impl, *a, dropout_rate=dropout_rate, query_tile=query_tile, softmax_dtype=softmax_dtype, cpb_dtype=cpb_dtype
    )
  )
  args = (q, k, v, pos_q, pos_k, list(cpb_params), dropout_rng)
  if implementation == "auto":  # no platform given: decided where the computation is lowered
    if not native_supported:
      return run("fused")(*args)
    return jax.lax.platform_dependent(*args, cpu=run("native"), default=run("fused"))
  return run(implementation)(*args)


def _cpb_attention(
  implementation, q, k, v, pos_q, pos_k, cpb_params, dropout_rng, *, dropout_rate, query_tile, softmax_dtype, cpb_dtype
):
  """`cpb_attention` with a concrete implementation."""
  if implementation == "pallas":
    return pallas_attention.pallas_cpb_attention(
      q,
      k,
      v,
      pos_q,
      pos_k,
      cpb_params,
      dropout_rate=dropout_rate,
      dropout_rng=dropout_rng,
      query_tile=query_tile,
      softmax_dtype=softmax_dtype,
      cpb_dtype=cpb_dtype,
    )
  n = q.shape[2]
  if implementation == "native":
    bias = native_cpb.relative_position_bias(pos_q, pos_k, list(cpb_params))
    return _attend_with_bias(q, k, v, bias, jnp.ones((n,), bool), dropout_rate, dropout_rng, softmax_dtype)
  if implementation == "reference" or (implementation == "chunked" and n <= query_tile):
    return _attend_block(
      q, k, v, pos_q, pos_k, cpb_params, jnp.ones((n,), bool), dropout_rate, dropout_rng, softmax_dtype, cpb_dtype
    )

  query_tile = min(query_tile, n)
  n_tiles = -(-n // query_tile)
  pad = n_tiles * query_tile - n
  b, h, _, dh = q.shape
  q_tiles = jnp.pad(q, ((0, 0), (0, 0), (0, pad), (0, 0)))
  q_tiles = q_tiles.reshape(b, h, n_tiles, query_tile, dh).transpose(2, 0, 1, 3, 4)
  pos_tiles = jnp.pad(pos_q, ((0, pad), (0, 0))).reshape(n_tiles, query_tile, -1)
  valid_tiles = (jnp.arange(n_tiles * query_tile) < n).reshape(n_tiles, query_tile)
  cpb_params = list(cpb_params)

  if implementation == "chunked":

    @jax.checkpoint
    def tile_fn(q_t, pos_t, valid_t, index, k, v, pos_k, cpb_params):
      rng = None if dropout_rng is None else jax.random.fold_in(dropout_rng, index)
      return _attend_block(q_t, k, v, pos_t, pos_k, cpb_params, valid_t, dropout_rate, rng, softmax_dtype, cpb_dtype)
  else:

    def tile_fn(q_t, pos_t, valid_t, index, k, v, pos_k, cpb_params):
      keep = None
      if dropout_rng is not None and dropout_rate > 0.0:
        keep = jax.random.bernoulli(
          jax.random.fold_in(dropout_rng, index), 1.0 - dropout_rate, (b, h, query_tile, k.shape[2])
        )
      return attend_tile(q_t, k, v, pos_t, pos_k, cpb_params, valid_t, keep, dropout_rate, softmax_dtype, cpb_dtype)

  def body(xs):
    q_t, pos_t, valid_t, index = xs
    return tile_fn(q_t, pos_t, valid_t, index, k, v, pos_k, cpb_params)

  out, mass = jax.lax.map(body, (q_tiles, pos_tiles, valid_tiles, jnp.arange(n_tiles)))
  out = out.transpose(1, 2, 0, 3, 4).reshape(b, h, n_tiles * query_tile, dh)[:, :, :n]
  return out, mass.sum(axis=0)
