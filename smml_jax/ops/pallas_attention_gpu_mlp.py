"""The CPB MLP inside a Pallas Triton (GPU) attention block: (query, key) pairs along rows.

A GPU program evaluates the MLP on P = BLOCK_Q x BLOCK_K pairs at a time, the pairs one flat row
axis and hidden units along columns, all in registers:

  layer 0 (fan-in D = 1 or 2): broadcast multiply-adds, (P, 1) x (1, w1);
  hidden layers: h (P, w_in) @ W (w_in, w_out) with `pl.dot`-able shapes, bias added as a row;
  the last layer (o outputs, o small): per output a multiply and a sum over columns.

Triton tensors have power-of-two sizes and its dot needs every dimension >= 16, so hidden widths
are zero-padded to a power of two >= 16 (`pack_layers`): a padded unit has zero weights in and
out and a zero bias, so relu(0) = 0 adds nothing and its gradients are sliced away by autodiff of
the padding. Every function here is traced inside a kernel; weights are read from refs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from smml_jax.ops.cpb import CPBParams

MIN_DOT = 16  # smallest dimension of a Triton dot


def padded_width(width: int) -> int:
  """A hidden width as the kernel holds it: the next power of two, at least MIN_DOT."""
  return max(MIN_DOT, 1 << max(0, int(width) - 1).bit_length())


def precision(dtype):
  """IEEE float32 products (HIGHEST) for float32 inputs; Triton's default would be TF32."""
  return jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None


def pack_layers(params: CPBParams, dtype) -> list[jax.Array]:
  """[W_0 (D, w1'), b_0 (w1',), W_1 (w1', w2'), b_1, ..., W_L^T (o, wL'), b_L (o,)].

  Hidden widths w' = `padded_width(w)` (zero padding); the hidden layers' W in `dtype` (their
  matmul inputs), layer 0 and the last layer (multiply-adds) and all biases in float32. The last
  layer is transposed so that output j's weights are one row.
  """
  packed, last = [], len(params) - 1
  for layer, (w, b) in enumerate(params):
    fan_in, fan_out = w.shape
    rows = fan_in if layer == 0 else padded_width(fan_in)
    cols = fan_out if layer == last else padded_width(fan_out)
    w = jnp.pad(w.astype(jnp.float32), ((0, rows - fan_in), (0, cols - fan_out)))
    b = jnp.pad(b.astype(jnp.float32), (0, cols - fan_out))
    if layer == last:
      w = w.T
    elif layer > 0:
      w = w.astype(dtype)
    packed += [w, b]
  return packed


def forward(t, w_refs, dtype):
  """The MLP on D inputs t, each (P,) float32 -> o outputs (P,) float32 and the post-ReLU
  activations (P, w') of every hidden layer (float32)."""
  dims, layers = len(t), len(w_refs) // 2
  z = w_refs[1][...][None, :] + sum(t[e][:, None] * w_refs[0][e, :][None, :] for e in range(dims))
  hidden = []
  for layer in range(1, layers):
    h = jnp.maximum(z, 0.0)
    hidden.append(h)
    if layer < layers - 1:
      z = (
        jax.lax.dot(
          h.astype(dtype), w_refs[2 * layer][...], precision=precision(dtype), preferred_element_type=jnp.float32
        )
        + w_refs[2 * layer + 1][...][None, :]
      )
  w_last, b_last = w_refs[-2], w_refs[-1]
  outputs = [jnp.sum(h * w_last[j, :][None, :], axis=1) + b_last[j] for j in range(w_last.shape[0])]
  return outputs, hidden


def backward(g_z, t, hidden, w_refs, dtype):
  """Gradients from the outputs' gradients g_z (o arrays (P,)).

  Returns (g_t: D arrays (P,), the weight gradients in `pack_layers`' layout and float32, except
  the last layer's as o rows (wL',) and o scalars). The hidden layers' matmuls take `dtype`
  inputs, as autodiff of the forward in `dtype` would, accumulating in float32.
  """
  f32, hi = jnp.float32, precision(dtype)
  layers = len(w_refs) // 2
  h, w_last = hidden[-1], w_refs[-2]
  g_w_last = [jnp.sum(h * g[:, None], axis=0) for g in g_z]
  g_b_last = [jnp.sum(g) for g in g_z]
  g_h = sum(g[:, None] * w_last[j, :][None, :] for j, g in enumerate(g_z))
  g_pre = jnp.where(h > 0, g_h, 0.0)
  grads = [None] * (2 * layers - 2)
  for layer in reversed(range(1, layers - 1)):
    h, w = hidden[layer - 1], w_refs[2 * layer][...]
    g_low = g_pre.astype(dtype)
    grads[2 * layer] = jax.lax.dot_general(
      h.astype(dtype), g_low, (((0,), (0,)), ((), ())), precision=hi, preferred_element_type=f32
    )
    grads[2 * layer + 1] = jnp.sum(g_pre, axis=0)
    g_h = jax.lax.dot_general(g_low, w, (((1,), (1,)), ((), ())), precision=hi, preferred_element_type=f32)
    g_pre = jnp.where(h > 0, g_h, 0.0)
  w0 = [w_refs[0][e, :] for e in range(len(t))]
  grads[0] = [jnp.sum(g_pre * t[e][:, None], axis=0) for e in range(len(t))]
  grads[1] = jnp.sum(g_pre, axis=0)
  g_t = [jnp.sum(g_pre * w0[e][None, :], axis=1) for e in range(len(t))]
  return g_t, grads, g_w_last, g_b_last


def sign_log(d):
  """sign(d) log(1 + |d|) and its slope 1 / (1 + |d|) (0 at d = 0, as autodiff of cpb.sign_log)."""
  mag = jnp.abs(d)
  value = jnp.log1p(mag)
  return jnp.where(d < 0, -value, value), jnp.where(d == 0, 0.0, 1.0 / (1.0 + mag))
