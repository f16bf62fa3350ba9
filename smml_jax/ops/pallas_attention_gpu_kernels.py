"""The forward and backward Pallas Triton (GPU) kernels of the CPB attention and their calls.

Grid (batch row, offset group, query block). A program holds BLOCK_Q queries of its group and
walks its M' sampled keys (M rounded up to BLOCK_K, the padding masked) in K = M' / BLOCK_K
blocks, unrolled: the bias MLP runs on BLOCK_Q x BLOCK_K pairs per key block
(`pallas_attention_gpu_mlp`), and the logits of all K blocks stay in registers, so the softmax
over keys is exact in one pass (M is small: 144 at full shape, 9 blocks of 16). Queries past N in
the last block are masked at every load and store (a GPU load past the array is undefined).

Sums over query blocks are per-program partials, reduced outside with jnp (deterministic, no
atomics): the key mass (forward); dk, dv, d pos_k and the MLP weight gradients (backward). The
backward keeps nothing from the forward but the inputs: it recomputes the bias, the
probabilities, then per key block the MLP forward with its activations and its backward; the
(pairs, hidden) activations never reach HBM.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from smml_jax.ops import pallas_attention_gpu_mlp as mlp

BLOCK_K = 16
_NT = (((1,), (1,)), ((), ()))  # a @ b^T
_TN = (((0,), (0,)), ((), ()))  # a^T @ b
_MASKED = -1e30  # logit of a padding key: exp underflows to 0, no inf - inf


def _dot(a, b, dims=(((1,), (0,)), ((), ()))):
  return jax.lax.dot_general(a, b, dims, precision=mlp.precision(a.dtype), preferred_element_type=jnp.float32)


def _split(refs, counts):
  out, at = [], 0
  for c in counts:
    out.append(refs[at : at + c])
    at += c
  return out


def _rows(n, block_q):
  """(BLOCK_Q,) bool: this program's queries that exist (< N)."""
  return pl.program_id(2) * block_q + jax.lax.broadcasted_iota(jnp.int32, (block_q,), 0) < n


def _load_rows(ref, valid):
  """A (BLOCK_Q, ...) block with rows past N read as 0."""
  mask = valid.reshape(valid.shape + (1,) * (len(ref.shape) - 1))
  return pltriton.load(ref, mask=mask, other=0)


def _store_rows(ref, value, valid):
  mask = valid.reshape(valid.shape + (1,) * (len(ref.shape) - 1))
  pltriton.store(ref, value.astype(ref.dtype), mask=mask)


def _at(ref, *idx):
  """ref.at[idx] with integer indices as int32 scalars (the interpreter's masked load needs that)."""
  return ref.at[tuple(jnp.int32(i) if isinstance(i, int) else i for i in idx)]


def _keys(c):
  return pl.ds(c * BLOCK_K, BLOCK_K)


def _pair_inputs(pos_q, poskt_ref, c):
  """sign-log distances of the block's (query, key) pairs: D arrays (P,) and slopes (BQ, BK)."""
  t, slopes = [], []
  for e, row in enumerate(pos_q):
    value, slope = mlp.sign_log(row[:, None] - poskt_ref[e, _keys(c)][None, :])
    t.append(value.reshape(-1))
    slopes.append(slope)
  return t, slopes


def _biases(pos_q, poskt_ref, w_refs, dtype, block_q, n_blocks):
  """bias[j][c]: head j's CPB logits (BQ, BK) for key block c."""
  heads = w_refs[-2].shape[0]
  bias = [[] for _ in range(heads)]
  for c in range(n_blocks):
    t, _ = _pair_inputs(pos_q, poskt_ref, c)
    outputs, _ = mlp.forward(t, w_refs, dtype)
    for j in range(heads):
      bias[j].append(outputs[j].reshape(block_q, BLOCK_K))
  return bias


def _probabilities(q, k_ref, j, bias, m):
  """softmax over all M keys of head j's q k^T + bias, as K blocks (BQ, BK) float32."""
  logits = []
  for c, b in enumerate(bias):
    s = _dot(q, k_ref[j, _keys(c), :], _NT) + b
    key = c * BLOCK_K + jax.lax.broadcasted_iota(jnp.int32, (1, BLOCK_K), 1)
    logits.append(jnp.where(key < m, s, _MASKED))
  top = functools.reduce(jnp.maximum, [jnp.max(s, axis=1) for s in logits])[:, None]
  exps = [jnp.exp(s - top) for s in logits]
  total = sum(jnp.sum(e, axis=1) for e in exps)[:, None]
  return [e / total for e in exps]


def _forward_kernel(*refs, n, m, n_w, has_keep, dropout_rate, cpb_dtype):
  (q_ref, k_ref, v_ref, posqt_ref, poskt_ref), keep, w_refs, (out_ref, mass_ref) = _split(
    refs, (5, int(has_keep), n_w, 2)
  )
  heads, block_q, _ = q_ref.shape
  n_blocks = k_ref.shape[1] // BLOCK_K
  valid = _rows(n, block_q)
  pos_q = [_load_rows(_at(posqt_ref, e), valid) for e in range(posqt_ref.shape[0])]
  bias = _biases(pos_q, poskt_ref, w_refs, cpb_dtype, block_q, n_blocks)
  for j in range(heads):
    q = _load_rows(_at(q_ref, j), valid)
    probs = _probabilities(q, k_ref, j, bias[j], m)
    out = None
    for c, p in enumerate(probs):
      p = jnp.where(valid[:, None], p, 0.0)
      mass_ref[j, _keys(c)] = jnp.sum(p, axis=0)
      if has_keep:
        kept = _load_rows(_at(keep[0], j, slice(None), _keys(c)), valid) != 0
        p = jnp.where(kept, p * (1.0 / (1.0 - dropout_rate)), 0.0)
      v = v_ref[j, _keys(c), :]
      term = _dot(p.astype(v.dtype), v)
      out = term if out is None else out + term
    _store_rows(_at(out_ref, j), out, valid)


def _backward_kernel(*refs, n, m, n_w, has_keep, with_posq, dropout_rate, cpb_dtype):
  (
    (q_ref, k_ref, v_ref, posqt_ref, poskt_ref),
    keep,
    (gout_ref, gmass_ref),
    w_refs,
    (gq_ref, gk_ref, gv_ref, gposk_ref),
    g_refs,
    gposqt,
  ) = _split(refs, (5, int(has_keep), 2, n_w, 4, n_w, int(with_posq)))
  heads, block_q, _ = q_ref.shape
  n_blocks = k_ref.shape[1] // BLOCK_K
  dims = posqt_ref.shape[0]
  scale = 1.0 / (1.0 - dropout_rate) if has_keep else 1.0
  valid = _rows(n, block_q)
  pos_q = [_load_rows(_at(posqt_ref, e), valid) for e in range(dims)]
  bias = _biases(pos_q, poskt_ref, w_refs, cpb_dtype, block_q, n_blocks)
  g_logits = []
  for j in range(heads):
    q, g_out = _load_rows(_at(q_ref, j), valid), _load_rows(_at(gout_ref, j), valid)
    probs = [jnp.where(valid[:, None], p, 0.0) for p in _probabilities(q, k_ref, j, bias[j], m)]
    g_probs, dropped = [], []
    for c, p in enumerate(probs):
      v = v_ref[j, _keys(c), :]
      g_p = _dot(g_out.astype(v.dtype), v, _NT)
      if has_keep:
        kept = _load_rows(_at(keep[0], j, slice(None), _keys(c)), valid) != 0
        g_p, p = jnp.where(kept, g_p * scale, 0.0), jnp.where(kept, p * scale, 0.0)
      g_probs.append(g_p + jnp.where(valid[:, None], gmass_ref[j, _keys(c)][None, :], 0.0))
      dropped.append(p)
    delta = sum(jnp.sum(p * g, axis=1) for p, g in zip(probs, g_probs))[:, None]
    g_q, g_logits_j = None, []
    for c, (p, g_p, p_drop) in enumerate(zip(probs, g_probs, dropped)):
      g_s = p * (g_p - delta)
      g_logits_j.append(g_s)
      k = k_ref[j, _keys(c), :]
      term = _dot(g_s.astype(q.dtype), k)
      g_q = term if g_q is None else g_q + term
      gk_ref[j, _keys(c), :] = _dot(g_s.astype(q.dtype), q, _TN)
      gv_ref[j, _keys(c), :] = _dot(p_drop.astype(g_out.dtype), g_out, _TN)
    _store_rows(_at(gq_ref, j), g_q, valid)
    g_logits.append(g_logits_j)

  totals, g_posq = None, [None] * dims
  for c in range(n_blocks):
    t, slopes = _pair_inputs(pos_q, poskt_ref, c)
    _, hidden = mlp.forward(t, w_refs, cpb_dtype)
    g_t, *grads = mlp.backward([g[c].reshape(-1) for g in g_logits], t, hidden, w_refs, cpb_dtype)
    totals = grads if totals is None else jax.tree.map(jnp.add, totals, grads)
    for e in range(dims):
      g_delta = g_t[e].reshape(block_q, BLOCK_K) * slopes[e]
      gposk_ref[e, _keys(c)] = -jnp.sum(g_delta, axis=0)
      row = jnp.sum(g_delta, axis=1)
      g_posq[e] = row if g_posq[e] is None else g_posq[e] + row
  hidden_grads, g_w_last, g_b_last = totals
  for e, row in enumerate(hidden_grads[0]):
    g_refs[0][e, :] = row
  for i in range(1, len(hidden_grads)):
    g_refs[i][...] = hidden_grads[i]
  for j, (row, b) in enumerate(zip(g_w_last, g_b_last)):
    g_refs[-2][j, :] = row
    g_refs[-1][j] = b
  if with_posq:
    for e in range(dims):
      _store_rows(_at(gposqt[0], e), g_posq[e], valid)


def _full(shape):
  return pl.BlockSpec(shape, lambda b, g, i: (0,) * len(shape))


def _in_specs(heads, block_q, dh, mp, dims, has_keep, w_mats):
  sq = pl.squeezed
  kv = pl.BlockSpec((sq, sq, heads, mp, dh), lambda b, g, i: (b, g, 0, 0, 0))
  specs = [
    pl.BlockSpec((sq, sq, heads, block_q, dh), lambda b, g, i: (b, g, 0, i, 0)),
    kv,
    kv,
    pl.BlockSpec((dims, block_q), lambda b, g, i: (0, i)),
    pl.BlockSpec((sq, sq, dims, mp), lambda b, g, i: (b, g, 0, 0)),
  ]
  if has_keep:
    specs.append(pl.BlockSpec((sq, sq, heads, block_q, mp), lambda b, g, i: (b, g, 0, i, 0)))
  return specs + [_full(w.shape) for w in w_mats]


def _params(num_warps):
  return pltriton.CompilerParams(num_warps=num_warps, num_stages=1)


def forward_call(qg, kg, vg, posqt, poskt, keep, w_mats, *, n, m, block_q, dropout_rate, cpb_dtype, interpret):
  """out (B, G, o, N, Dh') in v's dtype and the key mass per query block (B, G, nQ, o, M') f32.

  qg (B, G, o, N, Dh'), kg/vg (B, G, o, M', Dh') (Dh' a power of two >= 16, M' a multiple of
  BLOCK_K), posqt (D, N), poskt (B, G, D, M'), keep (B, G, o, N, M') int8 or None, w_mats:
  `pallas_attention_gpu_mlp.pack_layers`.
  """
  bsz, groups, heads, _, dh = qg.shape
  mp, dims = kg.shape[3], posqt.shape[0]
  n_q = -(-n // block_q)
  has_keep = keep is not None
  kernel = functools.partial(
    _forward_kernel, n=n, m=m, n_w=len(w_mats), has_keep=has_keep, dropout_rate=dropout_rate, cpb_dtype=cpb_dtype
  )
  sq = pl.squeezed
  inputs = [qg, kg, vg, posqt, poskt] + ([keep] if has_keep else []) + list(w_mats)
  return pl.pallas_call(
    kernel,
    grid=(bsz, groups, n_q),
    in_specs=_in_specs(heads, block_q, dh, mp, dims, has_keep, w_mats),
    out_specs=(
      pl.BlockSpec((sq, sq, heads, block_q, dh), lambda b, g, i: (b, g, 0, i, 0)),
      pl.BlockSpec((sq, sq, sq, heads, mp), lambda b, g, i: (b, g, i, 0, 0)),
    ),
    out_shape=(
      jax.ShapeDtypeStruct(qg.shape, vg.dtype),
      jax.ShapeDtypeStruct((bsz, groups, n_q, heads, mp), jnp.float32),
    ),
    compiler_params=_params(4),
    interpret=interpret,
    name="cpb_attention_gpu_fwd",
  )(*inputs)


def backward_call(
  qg, kg, vg, posqt, poskt, keep, w_mats, g_out, g_mass, *, n, m, block_q, dropout_rate, cpb_dtype, with_posq, interpret
):
  """Per query block partials: dq (B, G, o, N, Dh') float32; dk, dv (B, G, nQ, o, M', Dh'); d poskt
  (B, G, nQ, D, M'); the weight gradients (B, G, nQ, *w.shape) in `pack_layers`' layout; d posqt
  (B, G, D, N) when `with_posq`. g_out as qg, g_mass (B, G, o, M') float32."""
  bsz, groups, heads, _, dh = qg.shape
  mp, dims = kg.shape[3], posqt.shape[0]
  n_q = -(-n // block_q)
  has_keep = keep is not None
  kernel = functools.partial(
    _backward_kernel,
    n=n,
    m=m,
    n_w=len(w_mats),
    has_keep=has_keep,
    with_posq=with_posq,
    dropout_rate=dropout_rate,
    cpb_dtype=cpb_dtype,
  )
  sq, f32 = pl.squeezed, jnp.float32
  specs = _in_specs(heads, block_q, dh, mp, dims, has_keep, w_mats)
  specs[len(specs) - len(w_mats) : len(specs) - len(w_mats)] = [
    pl.BlockSpec((sq, sq, heads, block_q, dh), lambda b, g, i: (b, g, 0, i, 0)),
    pl.BlockSpec((sq, sq, heads, mp), lambda b, g, i: (b, g, 0, 0)),
  ]
  inputs = [qg, kg, vg, posqt, poskt] + ([keep] if has_keep else []) + [g_out, g_mass] + list(w_mats)
  per_block = lambda shape: (
    jax.ShapeDtypeStruct((bsz, groups, n_q) + shape, f32),
    pl.BlockSpec((sq, sq, sq) + shape, lambda b, g, i: (b, g, i) + (0,) * len(shape)),
  )
  outputs = [
    (jax.ShapeDtypeStruct(qg.shape, f32), pl.BlockSpec((sq, sq, heads, block_q, dh), lambda b, g, i: (b, g, 0, i, 0))),
    per_block((heads, mp, dh)),
    per_block((heads, mp, dh)),
    per_block((dims, mp)),
  ] + [per_block(w.shape) for w in w_mats]
  if with_posq:
    posq_spec = pl.BlockSpec((sq, sq, dims, block_q), lambda b, g, i: (b, g, 0, i))
    outputs.append((jax.ShapeDtypeStruct((bsz, groups, dims, n), f32), posq_spec))
  return pl.pallas_call(
    kernel,
    grid=(bsz, groups, n_q),
    in_specs=specs,
    out_specs=[spec for _, spec in outputs],
    out_shape=[shape for shape, _ in outputs],
    compiler_params=_params(4),
    interpret=interpret,
    name="cpb_attention_gpu_bwd",
  )(*inputs)
