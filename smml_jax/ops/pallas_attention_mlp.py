"""The CPB MLP inside a Pallas attention tile, lane-major: (query, key) pairs along lanes.

The attention kernels work on transposed tiles: keys on sublanes, the T queries of a tile on
lanes (T a multiple of 128). The MLP evaluates R keys x T queries at a time, the pairs laid along
lanes as one row of R * T (key-major, each key's T queries one lane-aligned segment), hidden
units on sublanes:

  layer 0 (fan-in D = 1 or 2): broadcast multiply-adds on the VPU, (w1, 1) x (1, R * T);
  hidden layers: W_l^T (w_out, w_in) @ h (w_in, R * T) on the MXU, bias added as a (w_out, 1)
  column;
  the last layer (o = 1 or 2 outputs): per output a multiply and a sum over sublanes on the VPU
  and XLU; on the MXU a (o, w_in) weight tile would occupy one row in 128 for a whole pass.

Every hidden unit of every pair is computed once (no block-diagonal redundancy), and every array
is lane-dense. Weights are passed as (W^T, bias column) per layer (`pack_layers`); the backward
pass returns gradients in the same layout (autodiff of `pack_layers` maps them back).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from smml_jax.ops.cpb import CPBParams

KEYS_PER_STEP = 8  # keys per MLP step: R * T pairs, 2048 lanes at the default 256-query tile

_NT = (((1,), (1,)), ((), ()))  # a @ b^T
_TN = (((0,), (0,)), ((), ()))  # a^T @ b


def precision(dtype):
  return jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None


def pack_layers(params: CPBParams, dtype) -> list[jax.Array]:
  """[W_0^T, b_0, W_1^T, b_1, ..., W_L, b_L]: hidden layers' W_l^T (w_out, w_in) in `dtype`
  (their matmul inputs); the VPU layers in float32: W_0^T (w1, D) and the last layer's W_L
  (w_in, o), untransposed (its columns are what multiplies); biases b_l (w_out, 1) float32."""
  packed, last = [], len(params) - 1
  for layer, (w, b) in enumerate(params):
    if layer == last:
      w = w.astype(jnp.float32)
    else:
      w = w.T.astype(jnp.float32 if layer == 0 else dtype)
    packed += [w, b.astype(jnp.float32)[:, None]]
  return packed


def mlp_flops(widths, pairs: int) -> int:
  """FLOPs of the MLP forward over `pairs` pairs: a multiply-add per weight and a bias add per
  unit (layer 0 on the VPU, the others on the MXU)."""
  return pairs * sum((2 * i + 1) * o for i, o in zip(widths[:-1], widths[1:]))


def mxu_passes_per_pair(widths, mxu: int) -> float:
  """Weight-tile column pushes per (query, key) pair of a train step (both kernels) spent on the
  hidden layers' matmuls by an `mxu` x `mxu` weight-stationary systolic array, a model of their
  MXU time: W^T (w_out, w_in) @ h (w_in, P) holds ceil(w_in / mxu) * ceil(w_out / mxu) weight
  tiles, each streaming the P pairs once, whatever part of a tile the weights fill; it runs 4
  times (forward; in the backward kernel the bias, the recomputed forward and dh = W g_z), and
  dW = g_z h^T (a contraction over pairs) ceil(w_in / mxu) * w_out / mxu pushes per pair. One
  bf16 pass each: float32 at `Precision.HIGHEST` takes several."""
  passes = 0.0
  for w_in, w_out in zip(widths[1:-2], widths[2:-1]):
    tiles_in, tiles_out = -(-w_in // mxu), -(-w_out // mxu)
    passes += 4 * tiles_in * tiles_out + tiles_in * w_out / mxu
  return passes


def key_steps(m: int) -> tuple[int, int]:
  """(keys per MLP step R, number of steps): the last step starts at M - R and overlaps the one
  before it when R does not divide M (its keys are recomputed, counted once in gradients)."""
  r = min(KEYS_PER_STEP, m)
  return r, -(-m // r)


def step_start(c, r: int, m: int):
  """First key of MLP step c."""
  return jnp.minimum(c * r, m - r)


def distances(posqt_ref, posk_ref, m0, r: int, valid):
  """pos_q - pos_k for keys m0 .. m0 + R - 1 and the tile's queries: D rows (1, R * T).

  posqt_ref: (D, T) query positions, posk_ref: (M, D) key positions; valid (1, T) bool: lanes
  past the N queries (an overhanging last tile: undefined values) are set to 0.
  """
  rows = []
  for e in range(posqt_ref.shape[0]):
    row = posqt_ref[e : e + 1, :]
    pieces = [jnp.where(valid, row - posk_ref[pl.ds(m0 + i, 1), e : e + 1], 0.0) for i in range(r)]
    rows.append(jnp.concatenate(pieces, axis=1) if r > 1 else pieces[0])
  return rows


def sign_log(d):
  """sign(d) log(1 + |d|) and its slope 1 / (1 + |d|) (0 at d = 0, as autodiff of cpb.sign_log)."""
  mag = jnp.abs(d)
  value = jnp.log1p(mag)
  return jnp.where(d < 0, -value, value), jnp.where(d == 0, 0.0, 1.0 / (1.0 + mag))


def forward(t, w_refs, dtype):
  """The MLP on D rows t (1, P) -> (o, P) float32 and the post-ReLU inputs of layers 1.. (float32).

  w_refs: `pack_layers`' arrays as refs. dtype: matmul input dtype of layers >= 1.
  """
  w0, b0 = w_refs[0][...], w_refs[1][...]
  z = b0 + sum(w0[:, e : e + 1] * t[e] for e in range(len(t)))
  hidden, last = [], len(w_refs) // 2 - 1
  for layer in range(1, last + 1):
    h = jnp.maximum(z, 0.0)
    hidden.append(h)
    if layer < last:
      z = (
        jnp.dot(w_refs[2 * layer][...], h.astype(dtype), preferred_element_type=jnp.float32, precision=precision(dtype))
        + w_refs[2 * layer + 1][...]
      )
  w, b = w_refs[2 * last][...], w_refs[2 * last + 1][...]
  rows = [jnp.sum(w[:, j : j + 1] * h, axis=0, keepdims=True) for j in range(w.shape[1])]
  return (jnp.concatenate(rows, axis=0) if len(rows) > 1 else rows[0]) + b, hidden


def backward(g_z, t, hidden, w_refs, g_refs, dtype):
  """Accumulates the weight and bias gradients into g_refs (`pack_layers`' layout, float32) and
  returns the gradients of the D inputs t, rows (1, P). g_z: (o, P) gradient of the output;
  the hidden layers' matmuls take `dtype` inputs (as autodiff of the forward in `dtype` would),
  accumulating in float32."""
  f32, hi = jnp.float32, precision(dtype)
  last = len(w_refs) // 2 - 1
  h, w = hidden[-1], w_refs[2 * last][...]
  for j in range(w.shape[1]):
    g_refs[2 * last][:, j : j + 1] += jnp.sum(h * g_z[j : j + 1], axis=1, keepdims=True)
  g_refs[2 * last + 1][...] += jnp.sum(g_z, axis=1, keepdims=True)
  g_h = sum(w[:, j : j + 1] * g_z[j : j + 1] for j in range(w.shape[1]))
  g_z = jnp.where(h > 0, g_h, 0.0)
  for layer in reversed(range(1, last)):
    h = hidden[layer - 1]
    g_refs[2 * layer][...] += jax.lax.dot_general(
      g_z.astype(dtype), h.astype(dtype), _NT, preferred_element_type=f32, precision=hi
    )
    g_refs[2 * layer + 1][...] += jnp.sum(g_z, axis=1, keepdims=True)
    g_h = jax.lax.dot_general(w_refs[2 * layer][...], g_z.astype(dtype), _TN, preferred_element_type=f32, precision=hi)
    g_z = jnp.where(h > 0, g_h, 0.0)
  w0 = w_refs[0][...]
  for e in range(len(t)):
    g_refs[0][:, e : e + 1] += jnp.sum(g_z * t[e], axis=1, keepdims=True)
  g_refs[1][...] += jnp.sum(g_z, axis=1, keepdims=True)
  return [jnp.sum(w0[:, e : e + 1] * g_z, axis=0, keepdims=True) for e in range(len(t))]


def fill_bias(posqt_ref, posk_ref, w_refs, bias_scr, dtype, valid):
  """bias_scr (o, M, T) <- CPB(pos_q - pos_k) for the tile's queries, R keys at a time."""
  heads, m, tile = bias_scr.shape
  r, steps = key_steps(m)

  def body(c, carry):
    m0 = step_start(c, r, m)
    t = [sign_log(d)[0] for d in distances(posqt_ref, posk_ref, m0, r, valid)]
    z, _ = forward(t, w_refs, dtype)
    for j in range(heads):
      for i in range(r):
        bias_scr[j, pl.ds(m0 + i, 1), :] = z[j : j + 1, i * tile : (i + 1) * tile]
    return carry

  jax.lax.fori_loop(0, steps, body, 0)


def backprop_bias(posqt_ref, posk_ref, w_refs, g_refs, gs_scr, dtype, valid, gposk_ref, gposqt_ref):
  """The MLP's backward from the logits' gradient gs_scr (o, M, T), its forward recomputed:
  weight gradients into g_refs, d pos_k into gposk_ref (M, D), d pos_q into gposqt_ref (D, T)
  (None: not wanted). All accumulate."""
  heads, m, tile = gs_scr.shape
  r, steps = key_steps(m)

  def body(c, carry):
    m0 = step_start(c, r, m)
    deltas = distances(posqt_ref, posk_ref, m0, r, valid)
    t, slopes = zip(*[sign_log(d) for d in deltas])
    _, hidden = forward(t, w_refs, dtype)
    rows = []
    for j in range(heads):
      # keys below c * R were done by the step before (an overlapping last step): counted once
      pieces = [jnp.where(m0 + i >= c * r, gs_scr[j, pl.ds(m0 + i, 1), :], 0.0) for i in range(r)]
      rows.append(jnp.concatenate(pieces, axis=1) if r > 1 else pieces[0])
    g_z = jnp.concatenate(rows, axis=0) if heads > 1 else rows[0]
    g_t = backward(g_z, t, hidden, w_refs, g_refs, dtype)
    for e, (g, slope) in enumerate(zip(g_t, slopes)):
      g_delta = g * slope
      for i in range(r):
        piece = g_delta[:, i * tile : (i + 1) * tile]
        gposk_ref[pl.ds(m0 + i, 1), e : e + 1] -= jnp.sum(piece, axis=1, keepdims=True)
        if gposqt_ref is not None:
          gposqt_ref[e : e + 1, :] += piece
    return carry

  jax.lax.fori_loop(0, steps, body, 0)


def nbytes(*arrays) -> int:
  return sum(math.prod(a.shape) * jnp.dtype(a.dtype).itemsize for a in arrays)
