"""CPB attention for one query tile with a hand-written backward pass.

Autodiff of `softmax(q k^T + CPB(pos_q - pos_k)) v` keeps (or, under `jax.checkpoint`, recomputes)
every hidden activation of the CPB MLP. This backward pass needs far less:

* the attention probabilities (B, H, T, M), kept from the forward pass;
* the ReLU pattern of the MLP's last hidden layer, kept as one bit per unit (32 units: one uint32
  per (query, key) pair);
* the earlier hidden layers, recomputed: for the original's 2 -> 32 -> 32 -> 1 MLP that is only
  the first layer, two multiply-adds per unit.

The last hidden layer's activations h = mask * (x W + b) are never needed: with u = mask * g (g the
bias cotangent of one output unit o), C = x^T u gives both weight gradients,
dW = C * W_out[:, o] and dW_out[:, o] = sum_i W * C + b * sum_p u, so a pair costs one forward
matmul and two backward matmuls of the 32 x 32 layer, instead of one forward, one recomputed
forward and two backward ones under rematerialisation.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

from smml_jax.ops.cpb import CPBParams, bias_to_heads, dense_layer, pair_inputs


def pack_bits(mask: jax.Array) -> jax.Array:
  """(P, W) bool -> (P, ceil(W / 32)) uint32, unit w in bit w % 32 of word w // 32."""
  p, w = mask.shape
  words = -(-w // 32)
  mask = jnp.pad(mask, ((0, 0), (0, words * 32 - w))).reshape(p, words, 32)
  shifts = jnp.arange(32, dtype=jnp.uint32)
  return jnp.sum(mask.astype(jnp.uint32) << shifts, axis=-1, dtype=jnp.uint32)


def unpack_bits(words: jax.Array, width: int) -> jax.Array:
  """Inverse of `pack_bits`: (P, ceil(W / 32)) uint32 -> (P, W) bool."""
  shifts = jnp.arange(32, dtype=jnp.uint32)
  bits = (words[:, :, None] >> shifts) & jnp.uint32(1)
  return bits.reshape(words.shape[0], -1)[:, :width].astype(bool)


def _prefix(t: jax.Array, params: CPBParams) -> jax.Array:
  """All CPB layers before the last hidden one, each followed by its ReLU: (P, D) -> (P, W_in)."""
  for layer in params:
    t = jax.nn.relu(dense_layer(t, layer))
  return t


def _prefix_with_vjp(t: jax.Array, params: CPBParams):
  """`_prefix` (recomputed) and its pullback g_x -> (g_t, [(g_kernel, g_bias), ...]), written out:
  autodiff of the broadcast first layer makes one pass over the (P, W) cotangent per input
  feature and output, where one where-and-contract per layer is enough."""
  inputs, pre_activations = [], []
  for layer in params:
    inputs.append(t)
    pre_activations.append(dense_layer(t, layer))
    t = jax.nn.relu(pre_activations[-1])

  def pullback(g):
    grads = []
    for x, z, (kernel, bias) in reversed(list(zip(inputs, pre_activations, params))):
      g_z = jnp.where(z > 0, g, 0.0)
      g_kernel = jnp.einsum("pd,pi->di", x, g_z, preferred_element_type=jnp.float32)
      g_bias = jnp.sum(g_z, axis=0, dtype=jnp.float32)
      grads.append((g_kernel.astype(kernel.dtype), g_bias.astype(bias.dtype)))
      g = jnp.einsum("pi,di->pd", g_z, kernel.astype(g_z.dtype), preferred_element_type=jnp.float32).astype(x.dtype)
    return g, grads[::-1]

  return t, pullback


def _heads_to_pairs(g_bias: jax.Array, groups: int) -> jax.Array:
  """Inverse layout of `cpb.bias_to_heads`: (B, G * o, T, M) -> (P, o)."""
  b, h, t, m = g_bias.shape
  o = h // groups
  return g_bias.reshape(b, groups, o, t, m).transpose(0, 1, 3, 4, 2).reshape(-1, o)


def _forward(q, k, v, pos_q, pos_k, params, valid, keep, dropout_rate, softmax_dtype, cpb_dtype):
  b, g, m, _ = pos_k.shape
  _, t_in = pair_inputs(pos_q, pos_k, cpb_dtype)
  x = _prefix(t_in, params[:-2])
  z = dense_layer(x, params[-2])
  mask = z > 0
  bias = dense_layer(jnp.where(mask, z, 0), params[-1])
  bias = bias_to_heads(bias, (b, g, q.shape[2], m))
  sim = jnp.einsum("bhtd,bhmd->bhtm", q, k, preferred_element_type=softmax_dtype)
  attn = jax.nn.softmax(sim + bias.astype(softmax_dtype), axis=-1)
  mass = jnp.einsum("bhtm,t->bhm", attn, valid.astype(attn.dtype))
  dropped = attn if keep is None else jnp.where(keep, attn / (1.0 - dropout_rate), 0.0)
  out = jnp.einsum("bhtm,bhmd->bhtd", dropped.astype(v.dtype), v)
  return (out, mass), (attn, pack_bits(mask))


@functools.partial(jax.custom_vjp, nondiff_argnums=(8, 9, 10))
def attend_tile(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  pos_q: jax.Array,
  pos_k: jax.Array,
  params: CPBParams,
  valid: jax.Array,
  keep: Optional[jax.Array],
  dropout_rate: float,
  softmax_dtype,
  cpb_dtype,
) -> tuple[jax.Array, jax.Array]:
  """Attention of one tile of T queries over M sampled keys, CPB bias included.

  Args:
    q: (B, H, T, Dh) scaled queries; k, v: (B, H, M, Dh).
    pos_q: (T, D) query positions; pos_k: (B, G, M, D) sampled key positions.
    params: CPB MLP (at least one hidden layer), last layer with o = H / G outputs.
    valid: (T,) bool, queries that count towards the key mass (padding is False).
    keep: (B, H, T, M) bool dropout mask or None; kept probabilities are divided by
      1 - `dropout_rate`.
    dropout_rate: the attention dropout rate `keep` was drawn with.
    softmax_dtype: dtype of the logits and probabilities; cpb_dtype: of the MLP's activations.

  Returns:
    out (B, H, T, Dh) and the attention mass per key over valid queries (B, H, M), pre-dropout.
  """
  return _forward(q, k, v, pos_q, pos_k, params, valid, keep, dropout_rate, softmax_dtype, cpb_dtype)[0]


def _attend_tile_fwd(q, k, v, pos_q, pos_k, params, valid, keep, dropout_rate, softmax_dtype, cpb_dtype):
  if len(params) < 2:
    raise ValueError("the fused CPB attention needs an MLP with at least one hidden layer")
  outputs, (attn, bits) = _forward(q, k, v, pos_q, pos_k, params, valid, keep, dropout_rate, softmax_dtype, cpb_dtype)
  return outputs, (q, k, v, pos_q, pos_k, params, valid, keep, attn, bits)


def _attend_tile_bwd(dropout_rate, softmax_dtype, cpb_dtype, residuals, cotangents):
  q, k, v, pos_q, pos_k, params, valid, keep, attn, bits = residuals
  g_out, g_mass = cotangents
  f32 = jnp.float32
  groups = pos_k.shape[1]

  # Attention: out = dropout(softmax(logits)) v, mass = sum_t valid * softmax(logits).
  dropped = attn if keep is None else jnp.where(keep, attn / (1.0 - dropout_rate), 0.0)
  g_v = jnp.einsum("bhtm,bhtd->bhmd", dropped.astype(v.dtype), g_out.astype(v.dtype), preferred_element_type=f32)
  g_dropped = jnp.einsum("bhtd,bhmd->bhtm", g_out.astype(v.dtype), v, preferred_element_type=f32)
  g_attn = g_dropped if keep is None else jnp.where(keep, g_dropped / (1.0 - dropout_rate), 0.0)
  g_attn = g_attn + g_mass.astype(f32)[:, :, None, :] * valid.astype(f32)[None, None, :, None]
  attn32 = attn.astype(f32)
  g_logits = attn32 * (g_attn - jnp.sum(attn32 * g_attn, axis=-1, keepdims=True))
  g_q = jnp.einsum("bhtm,bhmd->bhtd", g_logits.astype(q.dtype), k, preferred_element_type=f32)
  g_k = jnp.einsum("bhtm,bhtd->bhmd", g_logits.astype(q.dtype), q, preferred_element_type=f32)

  # CPB: bias = W_out^T relu(x W_h + b_h) + b_out, x = prefix(sign_log(delta)).
  delta, t_in = pair_inputs(pos_q, pos_k, cpb_dtype)
  x, prefix_vjp = _prefix_with_vjp(t_in, params[:-2])
  (w_h, b_h), (w_out, b_out) = params[-2], params[-1]
  mask = unpack_bits(bits, w_h.shape[1])
  # Materialised once: XLA would otherwise fuse the softmax backward into every hidden unit's use.
  g_bias = jax.lax.optimization_barrier(_heads_to_pairs(g_logits, groups))  # (P, o) float32
  w_h32, w_out32 = w_h.astype(f32), w_out.astype(f32)
  g_w_h = jnp.zeros(w_h.shape, f32)
  g_w_out_cols, g_b_h, g_x = [], 0.0, 0.0
  for o in range(w_out.shape[1]):
    u = jnp.where(mask, g_bias[:, o : o + 1], 0.0).astype(x.dtype)  # (P, W_h)
    c = jnp.einsum("pi,pj->ij", x, u, preferred_element_type=f32)
    u_sum = jnp.sum(u, axis=0, dtype=f32)
    g_w_h = g_w_h + c * w_out32[:, o][None, :]
    g_w_out_cols.append(jnp.sum(w_h32 * c, axis=0) + b_h.astype(f32) * u_sum)
    g_b_h = g_b_h + w_out32[:, o] * u_sum
    # d loss / d x = (u * W_out[:, o]) W_h^T, with W_out folded into the small matrix.
    g_x = g_x + jnp.einsum("pj,ij->pi", u, (w_h32 * w_out32[:, o][None, :]).astype(x.dtype), preferred_element_type=f32)
  g_w_out = jnp.stack(g_w_out_cols, axis=1)
  g_b_out = jnp.sum(g_bias, axis=0)
  g_t, g_prefix = prefix_vjp(g_x.astype(x.dtype))

  # sign_log'(d) = 1 / (1 + |d|), and 0 at d = 0 exactly (as autodiff of sign * log1p gives).
  slope = jnp.where(delta == 0, 0.0, 1.0 / (1.0 + jnp.abs(delta)))
  g_delta = g_t.astype(f32).reshape(delta.shape) * slope
  g_pos_q = jnp.sum(g_delta, axis=(0, 1, 3))
  g_pos_k = -jnp.sum(g_delta, axis=2)

  g_params = g_prefix + [
    (g_w_h.astype(w_h.dtype), g_b_h.astype(b_h.dtype)),
    (g_w_out.astype(w_out.dtype), g_b_out.astype(b_out.dtype)),
  ]
  g_params = type(params)(g_params) if isinstance(params, (list, tuple)) else g_params
  return (
    g_q.astype(q.dtype),
    g_k.astype(k.dtype),
    g_v.astype(v.dtype),
    g_pos_q.astype(pos_q.dtype),
    g_pos_k.astype(pos_k.dtype),
    g_params,
    None,
    None,
  )


attend_tile.defvjp(_attend_tile_fwd, _attend_tile_bwd)
