"""CPB attention as Pallas kernels: the bias MLP evaluated inside the attention tile.

One grid step handles one (batch row, offset group, tile of T queries) against all M sampled keys
of that group (M is small: 144 on the original's 50 x 50 grid), so the softmax needs no online
rescaling. Per step, in VMEM:

1. the CPB MLP on the T x M pairs, 8 query rows (one float32 sublane tile) at a time. The MLP runs
   on the MXU in a stacked layout: the activations of a layer of width w for 8 rows are one
   (w * 8, M) matrix (unit-major, keys on lanes), and layer l is one matmul with
   K_l = kron([W_l; b_l]^T, I_8) on [activations; ones]. K_l has 8x more entries than W_l (zeros
   off the block diagonal), which the MXU absorbs, and every operand stays a plain 2D tile;
2. softmax(q k^T + bias) v and the key mass, the bias never leaving VMEM.

The (pairs, hidden) activations are never written to HBM. The backward pass (`jax.custom_vjp`,
its own pallas_call) keeps nothing from the forward one but the inputs: it recomputes the MLP and
the probabilities, then runs the attention backward and the MLP backward, accumulating the K_l
gradients (whose block diagonals, summed by autodiff of the kron, are the weight gradients),
dk, dv and d pos_k over the query tiles of a (batch row, group) in resident output blocks.

Dropout uses the mask `reference` draws (bernoulli over the (B, H, N, M) probabilities), passed
as int8, so the kernel equals `reference` in law and, for one key, in value.

Targets: TPU (Mosaic). Anywhere else the same kernels run in Pallas' interpreter (`interpret`),
which is how CPU tests check them; a GPU (Triton / Mosaic GPU) kernel is not written: on a GPU
host `pallas` is refused with a clear error (use `fused`), see `why_unavailable`.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from smml_jax.ops.cpb import CPBParams

ROWS = 8  # query rows per MLP step: one float32 sublane tile
DEFAULT_QUERY_TILE = 256
TILE_MULTIPLE = 32  # int8 dropout-mask blocks: 32 sublanes
PLATFORMS = ("tpu",)  # platforms with a compiled kernel; others only interpret

_NT = (((1,), (1,)), ((), ()))  # a @ b^T
_TN = (((0,), (0,)), ((), ()))  # a^T @ b


def why_unavailable(platform: str) -> Optional[str]:
  """None when `pallas` compiles for `platform` ("tpu", "gpu", "cpu"), else the reason."""
  if platform in PLATFORMS:
    return None
  if platform in ("gpu", "cuda", "rocm"):
    return ("the Pallas CPB-attention kernel is written for TPU (Mosaic) only; there is no "
            "Triton / Mosaic GPU kernel yet: use attention_impl 'fused' on GPU")
  return (f"the Pallas CPB-attention kernel compiles for TPU only, not {platform!r}; on CPU it "
          "runs in Pallas' interpreter (slow, for tests) and 'native' or 'fused' should be used")


def _precision(dtype):
  return jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None


def _sign_log(d):
  """sign(d) log(1 + |d|) and its slope 1 / (1 + |d|) (0 at d = 0, as autodiff of cpb.sign_log)."""
  mag = jnp.abs(d)
  value = jnp.log1p(mag)
  return jnp.where(d < 0, -value, value), jnp.where(d == 0, 0.0, 1.0 / (1.0 + mag))


def _distances(posq_ref, poskt_ref, r0, limit):
  """delta = pos_q - pos_k for 8 query rows: D arrays (8, M); 0 on rows from `limit` (the tile's
  number of queries) on, where the last tile's block overhangs the arrays and holds undefined
  values."""
  valid = r0 + jax.lax.broadcasted_iota(jnp.int32, (ROWS, 1), 0) < limit
  return [jnp.where(valid, posq_ref[pl.ds(r0, ROWS), e:e + 1] - poskt_ref[e:e + 1, :], 0.0)
          for e in range(poskt_ref.shape[0])]


def _mlp_forward(t, k_refs, dtype):
  """Stacked MLP on 8 rows. t: D arrays (8, M) -> last layer (o * 8, M) float32 and the inputs
  [activations; ones] of every layer, in `dtype`."""
  ones = jnp.ones_like(t[0])
  a = jnp.concatenate(list(t) + [ones], axis=0).astype(dtype)
  inputs = [a]
  for layer, k_ref in enumerate(k_refs):
    z = jnp.dot(k_ref[...], a, preferred_element_type=jnp.float32, precision=_precision(dtype))
    if layer < len(k_refs) - 1:
      a = jnp.concatenate([jnp.maximum(z, 0.0), ones], axis=0).astype(dtype)
      inputs.append(a)
  return z, inputs


def _fill_bias(posq_ref, poskt_ref, k_refs, bias_scr, dtype, limit):
  """bias_scr (o, T, M) <- CPB(pos_q - pos_k) for the tile, 8 rows at a time."""
  heads, tile, _ = bias_scr.shape

  def body(c, carry):
    r0 = pl.multiple_of(c * ROWS, ROWS)
    t = [_sign_log(d)[0] for d in _distances(posq_ref, poskt_ref, r0, limit)]
    z, _ = _mlp_forward(t, k_refs, dtype)
    for j in range(heads):
      bias_scr[j, pl.ds(r0, ROWS), :] = z[j * ROWS:(j + 1) * ROWS]
    return carry

  jax.lax.fori_loop(0, tile // ROWS, body, 0)


def _probabilities(q, k, bias):
  """softmax(q k^T + bias) over keys, float32 (T, M)."""
  s = jax.lax.dot_general(q, k, _NT, preferred_element_type=jnp.float32,
                          precision=_precision(q.dtype)) + bias
  e = jnp.exp(s - jnp.max(s, axis=1, keepdims=True))
  return e / jnp.sum(e, axis=1, keepdims=True)


def _tile_limit(tile, n):
  """Number of this grid step's tile rows that are queries (< tile only in an overhanging last
  tile). Read at the kernel's top level: the interpreter resolves program_id only there."""
  return n - pl.program_id(2) * tile


def _valid_rows(tile, limit):
  """(tile, 1) bool: the rows of this tile that are queries."""
  return jax.lax.broadcasted_iota(jnp.int32, (tile, 1), 0) < limit


def _forward_kernel(*refs, n, n_layers, has_keep, dropout_rate, cpb_dtype):
  q_ref, k_ref, v_ref, posq_ref, poskt_ref = refs[:5]
  rest = refs[5:]
  keep_ref = rest[0] if has_keep else None
  rest = rest[1:] if has_keep else rest
  k_refs, (out_ref, mass_ref, bias_scr) = rest[:n_layers], rest[n_layers:]
  heads, tile, _ = q_ref.shape

  @pl.when(pl.program_id(2) == 0)
  def _():
    mass_ref[...] = jnp.zeros_like(mass_ref)

  limit = _tile_limit(tile, n)
  _fill_bias(posq_ref, poskt_ref, k_refs, bias_scr, cpb_dtype, limit)
  valid = _valid_rows(tile, limit)
  for j in range(heads):
    p = _probabilities(q_ref[j], k_ref[j], bias_scr[j])
    mass_ref[j:j + 1, :] += jnp.sum(jnp.where(valid, p, 0.0), axis=0, keepdims=True)
    if has_keep:
      p = jnp.where(keep_ref[j] != 0, p * (1.0 / (1.0 - dropout_rate)), 0.0)
    v = v_ref[j]
    out_ref[j] = jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32,
                         precision=_precision(v.dtype)).astype(out_ref.dtype)


def _backward_kernel(*refs, n, n_layers, has_keep, with_posq, dropout_rate, cpb_dtype):
  q_ref, k_ref, v_ref, posq_ref, poskt_ref = refs[:5]
  rest = refs[5:]
  keep_ref = rest[0] if has_keep else None
  rest = rest[1:] if has_keep else rest
  gout_ref, gmass_ref = rest[:2]
  rest = rest[2:]
  k_refs, kt_refs = rest[:n_layers], rest[n_layers:2 * n_layers]
  rest = rest[2 * n_layers:]
  gq_ref, gk_ref, gv_ref, gposkt_ref = rest[:4]
  gk_mats = rest[4:4 + n_layers]
  rest = rest[4 + n_layers:]
  gposq_ref = rest[0] if with_posq else None
  bias_scr, gs_scr = rest[-2:]
  heads, tile, _ = q_ref.shape
  f32 = jnp.float32
  hi = jax.lax.Precision.HIGHEST

  @pl.when(pl.program_id(2) == 0)
  def _():
    for ref in (gk_ref, gv_ref, gposkt_ref) + tuple(gk_mats):
      ref[...] = jnp.zeros_like(ref)

  # Attention backward for the whole tile, the bias recomputed.
  limit = _tile_limit(tile, n)
  _fill_bias(posq_ref, poskt_ref, k_refs, bias_scr, cpb_dtype, limit)
  valid = _valid_rows(tile, limit)
  scale = 1.0 / (1.0 - dropout_rate) if has_keep else 1.0
  for j in range(heads):
    # Rows past the N queries hold undefined values (NaN * 0 is NaN): zeroed before any sum.
    q = jnp.where(valid, q_ref[j], 0)
    g_out = jnp.where(valid, gout_ref[j], 0)
    k, v = k_ref[j], v_ref[j]
    p = jnp.where(valid, _probabilities(q, k, bias_scr[j]), 0.0)
    if has_keep:
      keep = keep_ref[j] != 0
      dropped = jnp.where(keep, p * scale, 0.0)
    else:
      dropped = p
    gv_ref[j] += jax.lax.dot_general(dropped.astype(v.dtype), g_out.astype(v.dtype), _TN,
                                     preferred_element_type=f32, precision=_precision(v.dtype))
    g_p = jax.lax.dot_general(g_out.astype(v.dtype), v, _NT, preferred_element_type=f32,
                              precision=_precision(v.dtype))
    if has_keep:
      g_p = jnp.where(keep, g_p * scale, 0.0)
    g_p = g_p + jnp.where(valid, gmass_ref[j:j + 1, :], 0.0)
    g_s = p * (g_p - jnp.sum(p * g_p, axis=1, keepdims=True))
    gq_ref[j] = jnp.dot(g_s.astype(q.dtype), k, preferred_element_type=f32,
                        precision=_precision(q.dtype))
    gk_ref[j] += jax.lax.dot_general(g_s.astype(q.dtype), q, _TN, preferred_element_type=f32,
                                     precision=_precision(q.dtype))
    gs_scr[j] = g_s

  # MLP backward, 8 rows at a time, its forward recomputed.
  n_dims = poskt_ref.shape[0]

  def body(c, carry):
    r0 = pl.multiple_of(c * ROWS, ROWS)
    deltas = _distances(posq_ref, poskt_ref, r0, limit)
    t, slopes = zip(*[_sign_log(d) for d in deltas])
    _, inputs = _mlp_forward(t, k_refs, cpb_dtype)
    g_z = jnp.concatenate([gs_scr[j, pl.ds(r0, ROWS), :] for j in range(heads)], axis=0)
    for layer in reversed(range(n_layers)):
      a = inputs[layer].astype(f32)
      gk_mats[layer][...] += jax.lax.dot_general(g_z, a, _NT, preferred_element_type=f32,
                                             precision=hi)
      g_a = jnp.dot(kt_refs[layer][...].astype(f32), g_z, preferred_element_type=f32, precision=hi)
      width = a.shape[0] - ROWS
      g_a = g_a[:width]
      g_z = jnp.where(a[:width] > 0, g_a, 0.0) if layer > 0 else g_a
    for e in range(n_dims):
      g_delta = g_z[e * ROWS:(e + 1) * ROWS] * slopes[e]
      gposkt_ref[e:e + 1, :] -= jnp.sum(g_delta, axis=0, keepdims=True)
      if with_posq:
        gposq_ref[pl.ds(r0, ROWS), e:e + 1] = jnp.sum(g_delta, axis=1, keepdims=True)
    return carry

  jax.lax.fori_loop(0, tile // ROWS, body, 0)


def kron_layers(params: CPBParams, dtype) -> list[jax.Array]:
  """The stacked layers K_l = kron([W_l; b_l]^T, I_8), (w_out * 8, (w_in + 1) * 8), in `dtype`."""
  eye = jnp.eye(ROWS, dtype=jnp.float32)
  return [jnp.kron(jnp.concatenate([w, b[None, :]], axis=0).T.astype(jnp.float32),
                   eye).astype(dtype) for w, b in params]


def _mlp_flops(k_mats, pairs):
  """MXU FLOPs of the stacked MLP forward over `pairs` (query, key) pairs."""
  return 2 * pairs // ROWS * sum(int(k.shape[0]) * int(k.shape[1]) for k in k_mats)


def _nbytes(*arrays):
  return sum(math.prod(a.shape) * jnp.dtype(a.dtype).itemsize for a in arrays)


def _specs(b_g_shape, heads, tile, dh, m, dims, has_keep, k_mats):
  """Block specs of the inputs shared by both kernels."""
  del b_g_shape
  sq = pl.squeezed
  q_spec = pl.BlockSpec((sq, sq, heads, tile, dh), lambda b, g, i: (b, g, 0, i, 0))
  kv_spec = pl.BlockSpec((sq, sq, heads, m, dh), lambda b, g, i: (b, g, 0, 0, 0))
  posq_spec = pl.BlockSpec((tile, dims), lambda b, g, i: (i, 0))
  poskt_spec = pl.BlockSpec((sq, sq, dims, m), lambda b, g, i: (b, g, 0, 0))
  specs = [q_spec, kv_spec, kv_spec, posq_spec, poskt_spec]
  if has_keep:
    specs.append(pl.BlockSpec((sq, sq, heads, tile, m), lambda b, g, i: (b, g, 0, i, 0)))
  specs += [pl.BlockSpec(k.shape, lambda b, g, i: (0, 0)) for k in k_mats]
  return specs


_SEMANTICS = pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary"))


def _forward_call(qg, kg, vg, posq, poskt, keep, k_mats, *, n, tile, dropout_rate, cpb_dtype,
                  interpret):
  bsz, groups, heads, n_q, dh = qg.shape
  n_pad = _round_up(n_q, tile)
  m, dims = kg.shape[3], posq.shape[1]
  has_keep = keep is not None
  kernel = functools.partial(_forward_kernel, n=n, n_layers=len(k_mats), has_keep=has_keep,
                             dropout_rate=dropout_rate, cpb_dtype=cpb_dtype)
  sq = pl.squeezed
  pairs = bsz * groups * n_pad * m
  inputs = [qg, kg, vg, posq, poskt] + ([keep] if has_keep else []) + list(k_mats)
  out_shape = (jax.ShapeDtypeStruct(qg.shape, vg.dtype),
               jax.ShapeDtypeStruct((bsz, groups, heads, m), jnp.float32))
  cost = pl.CostEstimate(
      flops=_mlp_flops(k_mats, pairs) + pairs * heads * (4 * dh + 8),
      transcendentals=pairs * (dims + heads),
      bytes_accessed=_nbytes(*inputs) + _nbytes(*out_shape))
  return pl.pallas_call(
      kernel,
      grid=(bsz, groups, n_pad // tile),  # the last block may overhang N: masked in-kernel
      in_specs=_specs((bsz, groups), heads, tile, dh, m, dims, has_keep, k_mats),
      out_specs=(pl.BlockSpec((sq, sq, heads, tile, dh), lambda b, g, i: (b, g, 0, i, 0)),
                 pl.BlockSpec((sq, sq, heads, m), lambda b, g, i: (b, g, 0, 0))),
      out_shape=out_shape,
      scratch_shapes=[pltpu.VMEM((heads, tile, m), jnp.float32)],
      compiler_params=_SEMANTICS,
      cost_estimate=cost,
      interpret=interpret,
      name="cpb_attention_fwd",
  )(*inputs)


def _backward_call(qg, kg, vg, posq, poskt, keep, k_mats, g_out, g_mass, *, n, tile,
                   dropout_rate, cpb_dtype, with_posq, interpret):
  bsz, groups, heads, n_q, dh = qg.shape
  n_pad = _round_up(n_q, tile)
  m, dims = kg.shape[3], posq.shape[1]
  has_keep = keep is not None
  kernel = functools.partial(_backward_kernel, n=n, n_layers=len(k_mats), has_keep=has_keep,
                             with_posq=with_posq, dropout_rate=dropout_rate, cpb_dtype=cpb_dtype)
  sq = pl.squeezed
  kt_mats = [k.T for k in k_mats]
  in_specs = _specs((bsz, groups), heads, tile, dh, m, dims, has_keep, k_mats)
  in_specs = in_specs[:5 + has_keep] + [
      pl.BlockSpec((sq, sq, heads, tile, dh), lambda b, g, i: (b, g, 0, i, 0)),
      pl.BlockSpec((sq, sq, heads, m), lambda b, g, i: (b, g, 0, 0))] + in_specs[5 + has_keep:]
  in_specs += [pl.BlockSpec(k.shape, lambda b, g, i: (0, 0)) for k in kt_mats]
  inputs = ([qg, kg, vg, posq, poskt] + ([keep] if has_keep else []) + [g_out, g_mass]
            + list(k_mats) + kt_mats)
  f32 = jnp.float32
  out_shape = [jax.ShapeDtypeStruct(qg.shape, f32), jax.ShapeDtypeStruct(kg.shape, f32),
               jax.ShapeDtypeStruct(vg.shape, f32), jax.ShapeDtypeStruct(poskt.shape, f32)]
  out_specs = [pl.BlockSpec((sq, sq, heads, tile, dh), lambda b, g, i: (b, g, 0, i, 0)),
               pl.BlockSpec((sq, sq, heads, m, dh), lambda b, g, i: (b, g, 0, 0, 0)),
               pl.BlockSpec((sq, sq, heads, m, dh), lambda b, g, i: (b, g, 0, 0, 0)),
               pl.BlockSpec((sq, sq, dims, m), lambda b, g, i: (b, g, 0, 0))]
  for k in k_mats:
    out_shape.append(jax.ShapeDtypeStruct((bsz, groups) + k.shape, f32))
    out_specs.append(pl.BlockSpec((sq, sq) + k.shape, lambda b, g, i: (b, g, 0, 0)))
  if with_posq:
    out_shape.append(jax.ShapeDtypeStruct((bsz, groups, n_q, dims), f32))
    out_specs.append(pl.BlockSpec((sq, sq, tile, dims), lambda b, g, i: (b, g, i, 0)))
  pairs = bsz * groups * n_pad * m
  # MLP: forward twice (bias, then inside its backward), backward two matmuls per layer.
  cost = pl.CostEstimate(
      flops=4 * _mlp_flops(k_mats, pairs) + pairs * heads * (10 * dh + 16),
      transcendentals=2 * pairs * (dims + heads),
      bytes_accessed=_nbytes(*inputs) + _nbytes(*out_shape))
  return pl.pallas_call(
      kernel,
      grid=(bsz, groups, n_pad // tile),  # the last block may overhang N: masked in-kernel
      in_specs=in_specs,
      out_specs=out_specs,
      out_shape=out_shape,
      scratch_shapes=[pltpu.VMEM((heads, tile, m), f32), pltpu.VMEM((heads, tile, m), f32)],
      compiler_params=_SEMANTICS,
      cost_estimate=cost,
      interpret=interpret,
      name="cpb_attention_bwd",
  )(*inputs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9, 10, 11))
def _attention(qg, kg, vg, posq, poskt, keep, k_mats, n, tile, dropout_rate, cpb_dtype,
               interpret):
  return _forward_call(qg, kg, vg, posq, poskt, keep, k_mats, n=n, tile=tile,
                       dropout_rate=dropout_rate, cpb_dtype=cpb_dtype, interpret=interpret)


def _attention_fwd(qg, kg, vg, posq, poskt, keep, k_mats, n, tile, dropout_rate, cpb_dtype,
                   interpret):
  values = [x.value for x in (qg, kg, vg, posq, poskt)]
  keep_value = None if keep is None else keep.value
  k_values = [x.value for x in k_mats]
  outputs = _forward_call(*values, keep_value, k_values, n=n, tile=tile,
                          dropout_rate=dropout_rate, cpb_dtype=cpb_dtype, interpret=interpret)
  # pos_q is a constant lattice in the model: its gradient (an (N, D) output, lane-sparse in
  # HBM) is computed only when something differentiates through it.
  with_posq = () if posq.perturbed else None
  return outputs, (values, keep_value, k_values, with_posq)


def _materialise(cotangent, like):
  if isinstance(cotangent, jax.custom_derivatives.SymbolicZero):
    return jnp.zeros(like.shape, like.dtype)
  return cotangent


def _attention_bwd(n, tile, dropout_rate, cpb_dtype, interpret, residuals, cotangents):
  values, keep, k_mats, with_posq = residuals
  qg, kg, vg, posq, poskt = values
  g_out = _materialise(cotangents[0], qg.astype(vg.dtype))
  g_mass = _materialise(cotangents[1], jnp.zeros(kg.shape[:3] + (kg.shape[3],), jnp.float32))
  grads = _backward_call(qg, kg, vg, posq, poskt, keep, k_mats, g_out.astype(vg.dtype),
                         g_mass.astype(jnp.float32), n=n, tile=tile, dropout_rate=dropout_rate,
                         cpb_dtype=cpb_dtype, with_posq=with_posq is not None,
                         interpret=interpret)
  g_q, g_k, g_v, g_poskt = grads[:4]
  g_k_mats = [g.sum(axis=(0, 1)).astype(k.dtype) for g, k in zip(grads[4:4 + len(k_mats)],
                                                                  k_mats)]
  if with_posq is not None:
    g_posq = grads[-1].sum(axis=(0, 1))
  else:
    g_posq = jnp.zeros(posq.shape, posq.dtype)
  return (g_q.astype(qg.dtype), g_k.astype(kg.dtype), g_v.astype(vg.dtype),
          g_posq.astype(posq.dtype), g_poskt.astype(poskt.dtype), None, g_k_mats)


_attention.defvjp(_attention_fwd, _attention_bwd, symbolic_zeros=True)


def _round_up(x: int, multiple: int) -> int:
  return -(-x // multiple) * multiple


def pallas_cpb_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    pos_q: jax.Array,
    pos_k: jax.Array,
    cpb_params: CPBParams,
    *,
    dropout_rate: float = 0.0,
    dropout_rng: Optional[jax.Array] = None,
    query_tile: int = DEFAULT_QUERY_TILE,
    softmax_dtype=jnp.float32,
    cpb_dtype=jnp.float32,
    interpret: Optional[bool] = None,
) -> tuple[jax.Array, jax.Array]:
  """softmax(q k^T + CPB(pos_q - pos_k)) v and the key mass, as `ops.attention.cpb_attention`.

  Args:
    q: (B, H, N, Dh) scaled queries; k, v: (B, H, M, Dh); H = G * o.
    pos_q: (N, D) query positions; pos_k: (B, G, M, D) sampled key positions.
    cpb_params: CPB MLP, at least one hidden layer, last layer with o outputs.
    dropout_rate, dropout_rng: attention dropout (the mask `reference` draws); None disables it.
    query_tile: queries per grid step, rounded up to a multiple of 32.
    softmax_dtype: must be float32 (the kernel's logits and probabilities are float32).
    cpb_dtype: dtype of the MLP's matmul inputs (float32 or bfloat16); accumulation is float32.
    interpret: run in Pallas' interpreter (any backend); None: compiled on TPU, interpreted
      elsewhere (chosen at lowering, by the platform the computation is compiled for).

  Returns:
    out (B, H, N, Dh) in v's dtype and the attention mass per key (B, H, M) float32, pre-dropout.
  """
  if jnp.dtype(softmax_dtype) != jnp.float32:
    raise ValueError(f"the pallas CPB attention computes its softmax in float32; got "
                     f"softmax_dtype={jnp.dtype(softmax_dtype).name}")
  if len(cpb_params) < 2:
    raise ValueError("the pallas CPB attention needs a CPB MLP with at least one hidden layer; "
                     f"got {len(cpb_params)} layer(s)")
  b, h, n, dh = q.shape
  groups, m = pos_k.shape[1:3]
  if h % groups or cpb_params[-1][0].shape[1] != h // groups:
    raise ValueError(f"{h} heads do not split into {groups} offset groups of "
                     f"{cpb_params[-1][0].shape[1]} (the CPB MLP's outputs)")
  heads = h // groups
  tile = _round_up(min(max(query_tile, 1), n), TILE_MULTIPLE)
  qg = q.reshape(b, groups, heads, n, dh)
  kg, vg = (t.reshape(b, groups, heads, m, dh) for t in (k, v))
  posq = pos_q.astype(jnp.float32)
  poskt = jnp.swapaxes(pos_k.astype(jnp.float32), 2, 3)
  keep = None
  if dropout_rng is not None and dropout_rate > 0.0:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, (b, h, n, m))
    keep = keep.reshape(b, groups, heads, n, m).astype(jnp.int8)
  else:
    dropout_rate = 0.0
  k_mats = kron_layers(cpb_params, cpb_dtype)
  static = (n, tile, float(dropout_rate), jnp.dtype(cpb_dtype))
  args = (qg, kg, vg, posq, poskt, keep, k_mats)
  if interpret is None:
    out, mass = jax.lax.platform_dependent(
        *args, tpu=lambda *a: _attention(*a, *static, False),
        default=lambda *a: _attention(*a, *static, True))
  else:
    out, mass = _attention(*args, *static, interpret)
  out = out.reshape(b, h, n, dh)
  return out, mass.reshape(b, h, m)
