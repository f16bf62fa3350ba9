"""The CPB MLP inside a Pallas attention tile, lane-major and packed for the MXU.

The attention kernels work on transposed tiles: keys on sublanes, the T queries of a tile on
lanes (T a multiple of 128). The MLP evaluates R keys x T queries at a time: P = R * T pairs,
key-major along lanes (each key's T queries one segment). A hidden layer W^T (w_out, w_in) fills
w_in / MXU of a weight-stationary MXU x MXU array (1/4 of v5e's 128 x 128 for w = 32) and each
weight tile streams every pair once, whatever part of it the weights fill. So the hidden
activations are *packed*: the P pairs are cut into `pack` lane slices of L = P / pack, stacked
on sublanes as (pack * w, L) (block s: slice s), and a hidden layer multiplies them by
kron(I_pack, W^T) (pack * w_out, pack * w_in): one pass of L columns carries all P pairs.

  layer 0 (fan-in D = 1 or 2): broadcast multiply-adds on the VPU, W_0^T tiled `pack` times
    against each input row's slices broadcast over their blocks (`expand`);
  hidden layers: kron(I_pack, W_l^T) @ h on the MXU, the bias tiled;
  the last layer (o = 1 or 2 outputs): per output a multiply and a sum over each block's
    sublanes on the VPU / XLU (`collapse`), back to (1, P) rows.

The kernels see only the packed arrays (`pack_layers`) and return their gradients in the same
layout (for kron(I, W^T) the whole (pack * w_out, pack * w_in) gradient, off-diagonal blocks
included); autodiff of `pack_layers` sums the diagonal blocks (and the tiles) back onto W.

Matmuls accumulate in float32; their operands are either exact (`exact=True`: float32 at
`Precision.HIGHEST`, several bf16 passes on a TPU, for the interpreter's parity with
`reference`) or rounded to bfloat16 for one MXU pass, what XLA's default precision does with
float32 dots on a TPU (`matmul`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from smml_jax.ops.cpb import CPBParams

KEYS_PER_STEP = 8  # keys per MLP step: R * T pairs, 2048 lanes at the default 256-query tile
DEFAULT_PACK = 4  # 128 x 128 MXU (v5e, v5p) over the original's 32 hidden units; 8 on v6e (256)

_NT = (((1,), (1,)), ((), ()))  # a @ b^T
_TN = (((0,), (0,)), ((), ()))  # a^T @ b
_NN = (((1,), (0,)), ((), ()))  # a @ b


def matmul(a, b, dims, exact: bool):
  """dot_general(a, b, dims) accumulated in float32 on the MXU. exact: float32 operands at
  `Precision.HIGHEST`; else float32 operands rounded to bfloat16 first (one pass). bfloat16
  operands are multiplied as they are either way."""
  f32 = jnp.float32
  if not exact:
    a, b = (x.astype(jnp.bfloat16) if x.dtype == f32 else x for x in (a, b))
  highest = exact and f32 in (a.dtype, b.dtype)
  return jax.lax.dot_general(
    a, b, dims, preferred_element_type=f32, precision=jax.lax.Precision.HIGHEST if highest else None
  )


def pack_for(mxu: int, widths) -> int:
  """Pack factor that fills an `mxu` x `mxu` array with the widest hidden layer's blocks."""
  return max(1, mxu // max(widths[1:-1]))


def packing(pack: int, r: int, tile: int) -> int:
  """The pack factor used for MLP steps of R keys x T queries: `pack` reduced to divide R * T."""
  return math.gcd(max(pack, 1), r * tile)


def pack_layers(params: CPBParams, dtype, pack: int) -> list[jax.Array]:
  """[W_0^T, b_0, kron(I, W_1^T), b_1, ..., W_L, b_L], packed `pack` times.

  Layer 0: W_0^T tiled (pack * w1, D) float32, its bias tiled (pack * w1, 1). Hidden layers:
  kron(I_pack, W_l^T) (pack * w_out, pack * w_in) in `dtype` (their matmul inputs), bias tiled
  (pack * w_out, 1) float32. Last layer: W_L tiled (pack * w_in, o) float32 (its columns are
  what multiplies), bias (o, 1) float32.
  """
  packed, last = [], len(params) - 1
  for layer, (w, b) in enumerate(params):
    w, b = w.astype(jnp.float32), b.astype(jnp.float32)[:, None]
    if layer == last:
      packed += [jnp.tile(w, (pack, 1)), b]
    elif layer == 0:
      packed += [jnp.tile(w.T, (pack, 1)), jnp.tile(b, (pack, 1))]
    else:
      packed += [jnp.kron(jnp.eye(pack, dtype=jnp.float32), w.T).astype(dtype), jnp.tile(b, (pack, 1))]
  return packed


def mlp_flops(widths, pairs: int) -> int:
  """Useful FLOPs of the MLP forward over `pairs` pairs: a multiply-add per weight and a bias
  add per unit (the kron's zero blocks are not counted)."""
  return pairs * sum((2 * i + 1) * o for i, o in zip(widths[:-1], widths[1:]))


def mxu_passes_per_pair(widths, mxu: int, pack: int = 1, keep_hidden: bool = True) -> float:
  """Weight-tile column pushes per (query, key) pair of a train step (both kernels) spent on the
  hidden layers' matmuls by an `mxu` x `mxu` weight-stationary systolic array, a model of their
  MXU time. The packed W (pack * w_out, pack * w_in) holds ceil(pack * w_in / mxu) *
  ceil(pack * w_out / mxu) weight tiles, each streaming the P / pack packed columns once,
  whatever part of it the weights fill (the kron's zero blocks and any padding included). That
  matmul runs in the forward kernel, in the backward kernel for the bias, for dh = W g_z and,
  unless the hidden activations are kept in VMEM (`keep_hidden`), for the recomputed forward.
  dW = g_z h^T contracts over the P / pack packed columns: ceil(pack * w_in / mxu) tiles per
  `mxu` columns, each streaming pack * w_out rows. One bf16 pass each: float32 operands at
  `Precision.HIGHEST` take several (counted by the caller)."""
  passes = 0.0
  for w_in, w_out in zip(widths[1:-2], widths[2:-1]):
    tiles_in, tiles_out = -(-pack * w_in // mxu), -(-pack * w_out // mxu)
    passes += (3 if keep_hidden else 4) * tiles_in * tiles_out / pack + tiles_in * w_out / mxu
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


def expand(row, w: int, pack: int):
  """(1, P) -> (pack * w, P / pack): lane slice s of the pairs broadcast over block s's w rows."""
  n = row.shape[1] // pack
  blocks = [jnp.broadcast_to(row[:, s * n : (s + 1) * n], (w, n)) for s in range(pack)]
  return jnp.concatenate(blocks, axis=0) if pack > 1 else blocks[0]


def collapse(x, pack: int):
  """(pack * w, L) -> (1, pack * L): each block summed over its w rows, laid back along lanes."""
  w = x.shape[0] // pack
  rows = [jnp.sum(x[s * w : (s + 1) * w], axis=0, keepdims=True) for s in range(pack)]
  return jnp.concatenate(rows, axis=1) if pack > 1 else rows[0]


def forward(t, w_refs, pack: int, exact: bool):
  """The MLP on D rows t (1, P) -> (o, P) float32, and the packed post-ReLU inputs of layers
  1.. (pack * w, P / pack) float32.

  w_refs: `pack_layers`' arrays (packed `pack` times) as refs.
  """
  w0, b0 = w_refs[0][...], w_refs[1][...]
  w1 = w0.shape[0] // pack
  z = b0 + sum(w0[:, e : e + 1] * expand(t[e], w1, pack) for e in range(len(t)))
  hidden, last = [], len(w_refs) // 2 - 1
  for layer in range(1, last + 1):
    h = jnp.maximum(z, 0.0)
    hidden.append(h)
    if layer < last:
      w = w_refs[2 * layer][...]
      z = matmul(w, h.astype(w.dtype), _NN, exact) + w_refs[2 * layer + 1][...]
  w, b = w_refs[2 * last][...], w_refs[2 * last + 1][...]
  rows = [collapse(w[:, j : j + 1] * h, pack) for j in range(w.shape[1])]
  return (jnp.concatenate(rows, axis=0) if len(rows) > 1 else rows[0]) + b, hidden


def backward(g_z, t, hidden, w_refs, g_refs, pack: int, exact: bool):
  """Accumulates the gradients of `pack_layers`' arrays into g_refs (float32) and returns the
  gradients of the D inputs t, rows (1, P). g_z: (o, P) gradient of the output; hidden: the
  packed post-ReLU activations of `forward`. The hidden layers' matmuls take the packed
  weights' dtype (as autodiff of the forward in that dtype would), accumulating in float32."""
  last = len(w_refs) // 2 - 1
  h, w = hidden[-1], w_refs[2 * last][...]
  w_in = w.shape[0] // pack
  g_rows = [expand(g_z[j : j + 1], w_in, pack) for j in range(w.shape[1])]
  for j, g_row in enumerate(g_rows):
    g_refs[2 * last][:, j : j + 1] += jnp.sum(h * g_row, axis=1, keepdims=True)
  g_refs[2 * last + 1][...] += jnp.sum(g_z, axis=1, keepdims=True)
  g_h = sum(w[:, j : j + 1] * g_row for j, g_row in enumerate(g_rows))
  g_z = jnp.where(h > 0, g_h, 0.0)
  for layer in reversed(range(1, last)):
    h, w = hidden[layer - 1], w_refs[2 * layer][...]
    # the whole packed dW, off-diagonal blocks included: autodiff of `pack_layers` keeps the diagonal
    g_refs[2 * layer][...] += matmul(g_z.astype(w.dtype), h.astype(w.dtype), _NT, exact)
    g_refs[2 * layer + 1][...] += jnp.sum(g_z, axis=1, keepdims=True)
    g_z = jnp.where(h > 0, matmul(w, g_z.astype(w.dtype), _TN, exact), 0.0)
  w0 = w_refs[0][...]
  w1 = w0.shape[0] // pack
  for e in range(len(t)):
    g_refs[0][:, e : e + 1] += jnp.sum(g_z * expand(t[e], w1, pack), axis=1, keepdims=True)
  g_refs[1][...] += jnp.sum(g_z, axis=1, keepdims=True)
  return [collapse(w0[:, e : e + 1] * g_z, pack) for e in range(len(t))]


def hidden_scratch_shapes(widths, pack: int, m: int, tile: int, dtype) -> list[tuple[tuple[int, ...], object]]:
  """(shape, dtype) of the VMEM buffers holding a tile's packed hidden activations, one per
  hidden layer of the MLP (D, w1, ..., o): (MLP steps, pack * w, R * T / pack)."""
  r, steps = key_steps(m)
  return [((steps, pack * w, r * tile // pack), jnp.dtype(dtype)) for w in widths[1:-1]]


def hidden_scratch_bytes(widths, pack: int, m: int, tile: int, dtype) -> int:
  return sum(math.prod(shape) * d.itemsize for shape, d in hidden_scratch_shapes(widths, pack, m, tile, dtype))


def fill_bias(posqt_ref, posk_ref, w_refs, bias_scr, pack, exact, valid, hidden_scr=()):
  """bias_scr (o, M, T) <- CPB(pos_q - pos_k) for the tile's queries, R keys at a time; with
  hidden_scr (`hidden_scratch_shapes`), the packed hidden activations of each step kept there."""
  heads, m, tile = bias_scr.shape
  r, steps = key_steps(m)

  def body(c, carry):
    m0 = step_start(c, r, m)
    t = [sign_log(d)[0] for d in distances(posqt_ref, posk_ref, m0, r, valid)]
    z, hidden = forward(t, w_refs, pack, exact)
    for scr, h in zip(hidden_scr, hidden):
      scr[c] = h.astype(scr.dtype)
    for j in range(heads):
      for i in range(r):
        bias_scr[j, pl.ds(m0 + i, 1), :] = z[j : j + 1, i * tile : (i + 1) * tile]
    return carry

  jax.lax.fori_loop(0, steps, body, 0)


def backprop_bias(
  posqt_ref, posk_ref, w_refs, g_refs, gs_scr, pack, exact, valid, gposk_ref, gposqt_ref, hidden_scr=()
):
  """The MLP's backward from the logits' gradient gs_scr (o, M, T): weight gradients into g_refs,
  d pos_k into gposk_ref (M, D), d pos_q into gposqt_ref (D, T) (None: not wanted). All
  accumulate. The hidden activations are read from hidden_scr (`fill_bias`), or recomputed when
  it is empty."""
  heads, m, tile = gs_scr.shape
  r, steps = key_steps(m)

  def body(c, carry):
    m0 = step_start(c, r, m)
    deltas = distances(posqt_ref, posk_ref, m0, r, valid)
    t, slopes = zip(*[sign_log(d) for d in deltas])
    if hidden_scr:
      hidden = [scr[c].astype(jnp.float32) for scr in hidden_scr]
    else:
      hidden = forward(t, w_refs, pack, exact)[1]
    rows = []
    for j in range(heads):
      # keys below c * R were done by the step before (an overlapping last step): counted once
      pieces = [jnp.where(m0 + i >= c * r, gs_scr[j, pl.ds(m0 + i, 1), :], 0.0) for i in range(r)]
      rows.append(jnp.concatenate(pieces, axis=1) if r > 1 else pieces[0])
    g_z = jnp.concatenate(rows, axis=0) if heads > 1 else rows[0]
    g_t = backward(g_z, t, hidden, w_refs, g_refs, pack, exact)
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
