"""The tiled attention paths never materialise the (B, H, N, M, hidden) CPB activations.

Checked on XLA's own buffer assignment of the compiled gradient (no timing): the reference keeps
several (B, G, N, M, hidden) tensors alive, the chunked path's temporaries are a fraction of that
and shrink with the query tile (they are per-tile workspace, not per-slide activations).
"""

import jax
import jax.numpy as jnp
import numpy as np

from smml_jax.ops.attention import cpb_attention
from smml_jax.ops.cpb import query_positions


def _temp_bytes(impl: str, query_tile: int, side: int = 16) -> tuple[int, int]:
  b, g, m, dh, hidden = 2, 2, 16, 8, 32
  rng = np.random.default_rng(0)
  f = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
  q, k, v = f(b, g, side * side, dh), f(b, g, m, dh), f(b, g, m, dh)
  pos_k = jnp.tanh(f(b, g, m, 2))
  params = [(f(2, hidden), f(hidden)), (f(hidden, hidden), f(hidden)), (f(hidden, 1), f(1))]
  pos_q = query_positions(side, 2)

  def loss(q, k, v, pos_k, params):
    out, _ = cpb_attention(q, k, v, pos_q, pos_k, params, implementation=impl, query_tile=query_tile)
    return jnp.sum(out**2)

  compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4))).lower(q, k, v, pos_k, params).compile()
  hidden_tensor = b * g * side * side * m * hidden * 4
  return compiled.memory_analysis().temp_size_in_bytes, hidden_tensor


def test_chunked_gradient_keeps_no_full_hidden_activation():
  ref, hidden_tensor = _temp_bytes("reference", 256)
  chunked, _ = _temp_bytes("chunked", 32)  # 8 tiles of the 256 queries
  smaller_tiles, _ = _temp_bytes("chunked", 16)
  assert ref > 2 * hidden_tensor  # the reference stores (B, G, N, M, hidden) activations
  assert chunked < ref / 4
  assert smaller_tiles < 0.75 * chunked


def test_fused_gradient_keeps_bits_not_hidden_activations():
  # What the fused backward keeps per (query, key) pair is the probability and one bit per hidden
  # unit (4 + 4 bytes here, against 128 for one hidden activation): with 4x the queries and the
  # same tile, its temporaries grow by far less than one hidden tensor would.
  small, hidden_small = _temp_bytes("fused", 32, side=16)
  large, hidden_large = _temp_bytes("fused", 32, side=32)
  assert large - small < (hidden_large - hidden_small) / 8
