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

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from smml_jax.ops import pallas_attention_mlp as mlp

_NT = (((1,), (1,)), ((), ()))  # a @ b^T
_TN = (((0,), (0,)), ((), ()))  # a^T @ b
_NN = (((1,), (0,)), ((), ()))  # a @ b


@dataclasses.dataclass(frozen=True)
class Config:
  """The kernels' static choices.

  n: queries; tile: queries per grid step; dropout_rate: 0 without dropout; cpb_dtype: the
  hidden layers' matmul inputs; pack: the MLP's pack factor (`pallas_attention_mlp`);
  keep_hidden: the backward kernel keeps the tile's hidden activations in VMEM rather than
  recomputing them; exact: float32 matmuls at `Precision.HIGHEST` rather than one bf16 pass;
  interpret: run in Pallas' interpreter.
  """

  n: int
  tile: int
  dropout_rate: float
  cpb_dtype: jnp.dtype
  pack: int
  keep_hidden: bool
  exact: bool
  interpret: object


_SEMANTICS = pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary"))


def _limit(tile, n):
  """Queries of this grid step's tile (< tile only in an overhanging last tile). Read at the
  kernel's top level: the interpreter resolves program_id only there."""
  return n - pl.program_id(2) * tile


def _probabilities_t(q, k, bias_t, exact):
  """softmax over keys of (q k^T)^T + bias^T: float32 (M, T)."""
  s = mlp.matmul(k, q, _NT, exact) + bias_t
  e = jnp.exp(s - jnp.max(s, axis=0, keepdims=True))
  return e / jnp.sum(e, axis=0, keepdims=True)


def _split(refs, counts):
  out, at = [], 0
  for c in counts:
    out.append(refs[at : at + c])
    at += c
  return out


def _forward_kernel(*refs, cfg: Config, n_w, has_keep):
  (q_ref, k_ref, v_ref, posqt_ref, posk_ref), keep, w_refs, (out_ref, mass_ref, bias_scr) = _split(
    refs, (5, int(has_keep), n_w, 3)
  )
  heads, tile, _ = q_ref.shape

  @pl.when(pl.program_id(2) == 0)
  def _():
    mass_ref[...] = jnp.zeros_like(mass_ref)

  limit = _limit(tile, cfg.n)
  valid = jax.lax.broadcasted_iota(jnp.int32, (1, tile), 1) < limit
  mlp.fill_bias(posqt_ref, posk_ref, w_refs, bias_scr, cfg.pack, cfg.exact, valid)
  ones = jnp.ones((8, tile), jnp.float32)
  for j in range(heads):
    p = jnp.where(valid, _probabilities_t(q_ref[j], k_ref[j], bias_scr[j], cfg.exact), 0.0)
    # sum over the tile's queries (lanes) as a (1, M) row: a matmul instead of a relayout; exact,
    # as XLA sums the key mass in float32
    mass_ref[j : j + 1, :] += mlp.matmul(ones, p, _NT, True)[0:1]
    if has_keep:
      p = jnp.where(keep[0][j] != 0, p * (1.0 / (1.0 - cfg.dropout_rate)), 0.0)
    v = v_ref[j]
    out_ref[j] = mlp.matmul(p.astype(v.dtype), v, _TN, cfg.exact).astype(out_ref.dtype)


def _backward_kernel(*refs, cfg: Config, n_w, has_keep, with_posq):
  n_hidden = n_w // 2 - 1 if cfg.keep_hidden else 0
  (
    (q_ref, k_ref, v_ref, posqt_ref, posk_ref),
    keep,
    (gout_ref, gmass_ref),
    w_refs,
    (gq_ref, gk_ref, gv_ref, gposk_ref),
    g_refs,
    gposqt,
    (bias_scr, gs_scr),
    hidden_scr,
  ) = _split(refs, (5, int(has_keep), 2, n_w, 4, n_w, int(with_posq), 2, n_hidden))
  heads, tile, _ = q_ref.shape
  exact = cfg.exact

  @pl.when(pl.program_id(2) == 0)
  def _():
    for ref in (gk_ref, gv_ref, gposk_ref) + tuple(g_refs):
      ref[...] = jnp.zeros_like(ref)

  limit = _limit(tile, cfg.n)
  valid = jax.lax.broadcasted_iota(jnp.int32, (1, tile), 1) < limit
  valid_rows = jax.lax.broadcasted_iota(jnp.int32, (tile, 1), 0) < limit
  mlp.fill_bias(posqt_ref, posk_ref, w_refs, bias_scr, cfg.pack, exact, valid, hidden_scr)
  scale = 1.0 / (1.0 - cfg.dropout_rate) if has_keep else 1.0
  for j in range(heads):
    # Rows past the N queries hold undefined values (NaN * 0 is NaN): zeroed before any sum.
    q = jnp.where(valid_rows, q_ref[j], 0)
    g_out = jnp.where(valid_rows, gout_ref[j], 0).astype(v_ref.dtype)
    k, v = k_ref[j], v_ref[j]
    p = jnp.where(valid, _probabilities_t(q, k, bias_scr[j], exact), 0.0)
    if has_keep:
      kept = keep[0][j] != 0
      dropped = jnp.where(kept, p * scale, 0.0)
    else:
      dropped = p
    gv_ref[j] += mlp.matmul(dropped.astype(v.dtype), g_out, _NN, exact)
    g_p = mlp.matmul(v, g_out, _NT, exact)
    if has_keep:
      g_p = jnp.where(kept, g_p * scale, 0.0)
    g_p = g_p + jnp.where(valid, gmass_ref[j], 0.0)
    g_s = p * (g_p - jnp.sum(p * g_p, axis=0, keepdims=True))
    gq_ref[j] = mlp.matmul(g_s.astype(q.dtype), k, _TN, exact)
    gk_ref[j] += mlp.matmul(g_s.astype(q.dtype), q, _NN, exact)
    gs_scr[j] = g_s
  if with_posq:
    gposqt[0][...] = jnp.zeros_like(gposqt[0])
  mlp.backprop_bias(
    posqt_ref,
    posk_ref,
    w_refs,
    g_refs,
    gs_scr,
    cfg.pack,
    exact,
    valid,
    gposk_ref,
    gposqt[0] if with_posq else None,
    hidden_scr,
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


def _widths(w_mats, pack):
  """(D, w1, ..., o) of `pallas_attention_mlp.pack_layers`' arrays, packed `pack` times."""
  weights = w_mats[::2]
  hidden = tuple(int(w.shape[0]) // pack for w in weights[:-1])
  return (int(weights[0].shape[1]),) + hidden + (int(weights[-1].shape[1]),)


def forward_call(qg, kg, vg, posqt, posk, keep_t, w_mats, cfg: Config):
  """out (B, G, o, N, Dh) in v's dtype, key mass (B, G, o, M) float32.

  qg (B, G, o, N, Dh), kg/vg (B, G, o, M, Dh), posqt (D, N), posk (B, G, M, D), keep_t
  (B, G, o, M, N) int8 or None, w_mats: `pallas_attention_mlp.pack_layers` (cfg.pack times).
  """
  bsz, groups, heads, n_q, dh = qg.shape
  m, dims, tile = kg.shape[3], posqt.shape[0], cfg.tile
  has_keep = keep_t is not None
  n_tiles = -(-n_q // tile)
  kernel = functools.partial(_forward_kernel, cfg=cfg, n_w=len(w_mats), has_keep=has_keep)
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
    cost_estimate=_cost(_widths(w_mats, cfg.pack), pairs, heads, dh, dims, 1, 4 * dh + 24, inputs, out_shape),
    interpret=cfg.interpret,
    name="cpb_attention_fwd",
  )(*inputs)


def backward_call(qg, kg, vg, posqt, posk, keep_t, w_mats, g_out, g_mass_t, cfg: Config, *, with_posq):
  """Gradients: dq, dk, dv (float32, as qg/kg/vg), d posk (B, G, M, D), the per-(B, G) weight
  gradients in `pack_layers`' layout, and d posqt (B, G, D, N) when `with_posq`.

  g_out as qg; g_mass_t (B, G, o, M, 1) float32, the key mass's gradient as columns.
  """
  bsz, groups, heads, n_q, dh = qg.shape
  m, dims, tile = kg.shape[3], posqt.shape[0], cfg.tile
  has_keep = keep_t is not None
  n_tiles = -(-n_q // tile)
  kernel = functools.partial(_backward_kernel, cfg=cfg, n_w=len(w_mats), has_keep=has_keep, with_posq=with_posq)
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
  hidden = []
  if cfg.keep_hidden:
    shapes = mlp.hidden_scratch_shapes(_widths(w_mats, cfg.pack), cfg.pack, m, tile, cfg.cpb_dtype)
    hidden = [pltpu.VMEM(shape, dtype) for shape, dtype in shapes]
  return pl.pallas_call(
    kernel,
    grid=(bsz, groups, n_tiles),
    in_specs=specs + w_specs,
    out_specs=out_specs,
    out_shape=out_shape,
    scratch_shapes=[pltpu.VMEM((heads, m, tile), f32), pltpu.VMEM((heads, m, tile), f32)] + hidden,
    compiler_params=_SEMANTICS,
    # the MLP forward for the bias (and again for its backward unless the hidden activations are
    # kept) and its backward (two matmuls per layer: about 2 forwards); attention: q.k, dv, dp,
    # dq, dk: 10 Dh
    cost_estimate=_cost(
      _widths(w_mats, cfg.pack), pairs, heads, dh, dims, 4 - cfg.keep_hidden, 10 * dh + 16, inputs, out_shape
    ),
    interpret=cfg.interpret,
    name="cpb_attention_bwd",
  )(*inputs)
