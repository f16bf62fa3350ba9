"""The forward and backward Pallas kernels of the CPB attention, and their `pallas_call`s.

Grid (batch row, offset group, query tile). A step holds one tile of T queries against all M
sampled keys of its group in VMEM, transposed: keys on sublanes, queries on lanes (T a multiple
of 128, or all N queries), so the bias MLP's pairs lie along lanes (`pallas_attention_mlp`) and
the logits, probabilities and their gradients are (M, T) tiles, the softmax a reduction over
sublanes. The last tile may overhang N: its lanes (rows of q) past N hold undefined values and
are masked before anything is summed.

Accumulated over a (batch row, group)'s query tiles in resident output blocks: the key mass
(forward), dk, dv, d pos_k and the MLP's weight gradients (backward).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from smml_jax.ops import pallas_attention_mlp as mlp

_NT = (((1,), (1,)), ((), ()))  # a @ b^T
_TN = (((0,), (0,)), ((), ()))  # a^T @ b
_NN = (((1,), (0,)), ((), ()))  # a @ b
_SEMANTICS = pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary"))


def _limit(tile, n):
  """Queries of this grid step's tile (< tile only in an overhanging last tile). Read at the
  kernel's top level: the interpreter resolves program_id only there."""
  return n - pl.program_id(2) * tile


def _probabilities_t(q, k, bias_t):
  """softmax over keys of (q k^T)^T + bias^T: float32 (M, T)."""
  s = jax.lax.dot_general(k, q, _NT, preferred_element_type=jnp.float32, precision=mlp.precision(q.dtype)) + bias_t
  e = jnp.exp(s - jnp.max(s, axis=0, keepdims=True))
  return e / jnp.sum(e, axis=0, keepdims=True)


def _split(refs, counts):
  out, at = [], 0
  for c in counts:
    out.append(refs[at : at + c])
    at += c
  return out


def _forward_kernel(*refs, n, n_w, has_keep, dropout_rate, cpb_dtype):
  (q_ref, k_ref, v_ref, posqt_ref, posk_ref), keep, w_refs, (out_ref, mass_ref, bias_scr) = _split(
    refs, (5, int(has_keep), n_w, 3)
  )
  heads, tile, _ = q_ref.shape

  @pl.when(pl.program_id(2) == 0)
  def _():
    mass_ref[...] = jnp.zeros_like(mass_ref)

  limit = _limit(tile, n)
  valid = jax.lax.broadcasted_iota(jnp.int32, (1, tile), 1) < limit
  mlp.fill_bias(posqt_ref, posk_ref, w_refs, bias_scr, cpb_dtype, valid)
  ones = jnp.ones((8, tile), jnp.float32)
  for j in range(heads):
    p = jnp.where(valid, _probabilities_t(q_ref[j], k_ref[j], bias_scr[j]), 0.0)
    # sum over the tile's queries (lanes) as a (1, M) row: a matmul instead of a relayout
    mass_ref[j : j + 1, :] += jax.lax.dot_general(
      ones, p, _NT, preferred_element_type=jnp.float32, precision=jax.lax.Precision.HIGHEST
    )[0:1]
    if has_keep:
      p = jnp.where(keep[0][j] != 0, p * (1.0 / (1.0 - dropout_rate)), 0.0)
    v = v_ref[j]
    out_ref[j] = jax.lax.dot_general(
      p.astype(v.dtype), v, _TN, preferred_element_type=jnp.float32, precision=mlp.precision(v.dtype)
    ).astype(out_ref.dtype)


def _backward_kernel(*refs, n, n_w, has_keep, with_posq, dropout_rate, cpb_dtype):
  (
    (q_ref, k_ref, v_ref, posqt_ref, posk_ref),
    keep,
    (gout_ref, gmass_ref),
    w_refs,
    (gq_ref, gk_ref, gv_ref, gposk_ref),
    g_refs,
    gposqt,
    (bias_scr, gs_scr),
  ) = _split(refs, (5, int(has_keep), 2, n_w, 4, n_w, int(with_posq), 2))
  heads, tile, _ = q_ref.shape
  f32 = jnp.float32

  @pl.when(pl.program_id(2) == 0)
  def _():
    for ref in (gk_ref, gv_ref, gposk_ref) + tuple(g_refs):
      ref[...] = jnp.zeros_like(ref)

  limit = _limit(tile, n)
  valid = jax.lax.broadcasted_iota(jnp.int32, (1, tile), 1) < limit
  valid_rows = jax.lax.broadcasted_iota(jnp.int32, (tile, 1), 0) < limit
  mlp.fill_bias(posqt_ref, posk_ref, w_refs, bias_scr, cpb_dtype, valid)
  scale = 1.0 / (1.0 - dropout_rate) if has_keep else 1.0
  for j in range(heads):
    # Rows past the N queries hold undefined values (NaN * 0 is NaN): zeroed before any sum.
    q = jnp.where(valid_rows, q_ref[j], 0)
    g_out = jnp.where(valid_rows, gout_ref[j], 0)
    k, v = k_ref[j], v_ref[j]
    p = jnp.where(valid, _probabilities_t(q, k, bias_scr[j]), 0.0)
    if has_keep:
      kept = keep[0][j] != 0
      dropped = jnp.where(kept, p * scale, 0.0)
    else:
      dropped = p
    gv_ref[j] += jax.lax.dot_general(
      dropped.astype(v.dtype), g_out.astype(v.dtype), _NN, preferred_element_type=f32, precision=mlp.precision(v.dtype)
    )
    g_p = jax.lax.dot_general(
      v, g_out.astype(v.dtype), _NT, preferred_element_type=f32, precision=mlp.precision(v.dtype)
    )
    if has_keep:
      g_p = jnp.where(kept, g_p * scale, 0.0)
    g_p = g_p + jnp.where(valid, gmass_ref[j], 0.0)
    g_s = p * (g_p - jnp.sum(p * g_p, axis=0, keepdims=True))
    gq_ref[j] = jax.lax.dot_general(
      g_s.astype(q.dtype), k, _TN, preferred_element_type=f32, precision=mlp.precision(q.dtype)
    )
    gk_ref[j] += jax.lax.dot_general(
      g_s.astype(q.dtype), q, _NN, preferred_element_type=f32, precision=mlp.precision(q.dtype)
    )
    gs_scr[j] = g_s
  if with_posq:
    gposqt[0][...] = jnp.zeros_like(gposqt[0])
  mlp.backprop_bias(
    posqt_ref, posk_ref, w_refs, g_refs, gs_scr, cpb_dtype, valid, gposk_ref, gposqt[0] if with_posq else None
  )


def _in_specs(heads, tile, dh, m, dims, has_keep, w_mats):
  """Block specs of the inputs shared by both kernels."""
  sq = pl.squeezed
  specs = [
    pl.BlockSpec((sq, sq, heads, tile, dh), lambda b, g, i: (b, g, 0, i, 0)),
    pl.BlockSpec((sq, sq, heads, m, dh), lambda b, g, i: (b, g, 0, 0, 0)),
    pl.BlockSpec((sq, sq, heads, m, dh), lambda b, g, i: (b, g, 0, 0, 0)),
    pl.BlockSpec((dims, tile), lambda b, g, i: (0, i)),
    pl.BlockSpec((sq, sq, m, dims), lambda b, g, i: (b, g, 0, 0)),
  ]
  if has_keep:
    specs.append(pl.BlockSpec((sq, sq, heads, m, tile), lambda b, g, i: (b, g, 0, 0, i)))
  return specs, [pl.BlockSpec(w.shape, lambda b, g, i: (0, 0)) for w in w_mats]


def _cost(widths, pairs, heads, dh, dims, mlp_passes, attention_flops_per_pair, inputs, outputs):
  return pl.CostEstimate(
    flops=mlp_passes * mlp.mlp_flops(widths, pairs) + pairs * heads * attention_flops_per_pair,
    transcendentals=(1 + (mlp_passes > 1)) * pairs * (dims + heads),
    bytes_accessed=mlp.nbytes(*inputs) + mlp.nbytes(*outputs),
  )


def _widths(w_mats):
  """(D, w1, ..., o) of `pallas_attention_mlp.pack_layers`' arrays."""
  weights = w_mats[::2]
  return (int(weights[0].shape[1]),) + tuple(int(w.shape[0]) for w in weights[:-1]) + (int(weights[-1].shape[1]),)


def forward_call(qg, kg, vg, posqt, posk, keep_t, w_mats, *, n, tile, dropout_rate, cpb_dtype, interpret):
  """out (B, G, o, N, Dh) in v's dtype, key mass (B, G, o, M) float32.

  qg (B, G, o, N, Dh), kg/vg (B, G, o, M, Dh), posqt (D, N), posk (B, G, M, D), keep_t
  (B, G, o, M, N) int8 or None, w_mats: `pallas_attention_mlp.pack_layers`.
  """
  bsz, groups, heads, n_q, dh = qg.shape
  m, dims = kg.shape[3], posqt.shape[0]
  has_keep = keep_t is not None
  n_tiles = -(-n_q // tile)
  kernel = functools.partial(
    _forward_kernel, n=n, n_w=len(w_mats), has_keep=has_keep, dropout_rate=dropout_rate, cpb_dtype=cpb_dtype
  )
  sq = pl.squeezed
  specs, w_specs = _in_specs(heads, tile, dh, m, dims, has_keep, w_mats)
  inputs = [qg, kg, vg, posqt, posk] + ([keep_t] if has_keep else []) + list(w_mats)
  out_shape = (jax.ShapeDtypeStruct(qg.shape, vg.dtype), jax.ShapeDtypeStruct((bsz, groups, heads, m), jnp.float32))
  pairs = bsz * groups * n_tiles * tile * m
  return pl.pallas_call(
    kernel,
    grid=(bsz, groups, n_tiles),
    in_specs=specs + w_specs,
    out_specs=(
      pl.BlockSpec((sq, sq, heads, tile, dh), lambda b, g, i: (b, g, 0, i, 0)),
      pl.BlockSpec((sq, sq, heads, m), lambda b, g, i: (b, g, 0, 0)),
    ),
    out_shape=out_shape,
    scratch_shapes=[pltpu.VMEM((heads, m, tile), jnp.float32)],
    compiler_params=_SEMANTICS,
    # q.k and p.v: 4 Dh; the mass matmul (8 rows) 16; softmax ~8
    cost_estimate=_cost(_widths(w_mats), pairs, heads, dh, dims, 1, 4 * dh + 24, inputs, out_shape),
    interpret=interpret,
    name="cpb_attention_fwd",
  )(*inputs)


def backward_call(
  qg, kg, vg, posqt, posk, keep_t, w_mats, g_out, g_mass_t, *, n, tile, dropout_rate, cpb_dtype, with_posq, interpret
):
  """Gradients: dq, dk, dv (float32, as qg/kg/vg), d posk (B, G, M, D), the per-(B, G) weight
  gradients in `pack_layers`' layout, and d posqt (B, G, D, N) when `with_posq`.

  g_out as qg; g_mass_t (B, G, o, M, 1) float32, the key mass's gradient as columns.
  """
  bsz, groups, heads, n_q, dh = qg.shape
  m, dims = kg.shape[3], posqt.shape[0]
  has_keep = keep_t is not None
  n_tiles = -(-n_q // tile)
  kernel = functools.partial(
    _backward_kernel,
    n=n,
    n_w=len(w_mats),
    has_keep=has_keep,
    with_posq=with_posq,
    dropout_rate=dropout_rate,
    cpb_dtype=cpb_dtype,
  )
  sq = pl.squeezed
  specs, w_specs = _in_specs(heads, tile, dh, m, dims, has_keep, w_mats)
  specs += [
    pl.BlockSpec((sq, sq, heads, tile, dh), lambda b, g, i: (b, g, 0, i, 0)),
    pl.BlockSpec((sq, sq, heads, m, 1), lambda b, g, i: (b, g, 0, 0, 0)),
  ]
  inputs = [qg, kg, vg, posqt, posk] + ([keep_t] if has_keep else []) + [g_out, g_mass_t] + list(w_mats)
  f32 = jnp.float32
  kv_spec = pl.BlockSpec((sq, sq, heads, m, dh), lambda b, g, i: (b, g, 0, 0, 0))
  out_shape = [
    jax.ShapeDtypeStruct(qg.shape, f32),
    jax.ShapeDtypeStruct(kg.shape, f32),
    jax.ShapeDtypeStruct(vg.shape, f32),
    jax.ShapeDtypeStruct(posk.shape, f32),
  ]
  out_specs = [
    pl.BlockSpec((sq, sq, heads, tile, dh), lambda b, g, i: (b, g, 0, i, 0)),
    kv_spec,
    kv_spec,
    pl.BlockSpec((sq, sq, m, dims), lambda b, g, i: (b, g, 0, 0)),
  ]
  for w in w_mats:
    out_shape.append(jax.ShapeDtypeStruct((bsz, groups) + w.shape, f32))
    out_specs.append(pl.BlockSpec((sq, sq) + w.shape, lambda b, g, i: (b, g, 0, 0)))
  if with_posq:
    out_shape.append(jax.ShapeDtypeStruct((bsz, groups, dims, n_q), f32))
    out_specs.append(pl.BlockSpec((sq, sq, dims, tile), lambda b, g, i: (b, g, 0, i)))
  pairs = bsz * groups * n_tiles * tile * m
  return pl.pallas_call(
    kernel,
    grid=(bsz, groups, n_tiles),
    in_specs=specs + w_specs,
    out_specs=out_specs,
    out_shape=out_shape,
    scratch_shapes=[pltpu.VMEM((heads, m, tile), f32), pltpu.VMEM((heads, m, tile), f32)],
    compiler_params=_SEMANTICS,
    # the MLP forward twice (the bias, then inside its backward) and its backward (two matmuls
    # per layer: about 2 forwards); attention: q.k, dv, dp, dq, dk: 10 Dh
    cost_estimate=_cost(_widths(w_mats), pairs, heads, dh, dims, 4, 10 * dh + 16, inputs, out_shape),
    interpret=interpret,
    name="cpb_attention_bwd",
  )(*inputs)
