"""cpb_attention: chunked, fused and native paths equal the reference; mixed precision keeps float32 where it must."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _tiny import TINY_MODEL
from conftest import NATIVE

from smml_jax.models.registry import build_model
from smml_jax.ops.attention import cpb_attention
from smml_jax.ops.cpb import query_positions


def _inputs(b=2, g=2, heads_per_group=2, side=6, m=5, dh=4, seed=0, hidden=(8, 8)):
  rng = np.random.default_rng(seed)
  h = g * heads_per_group
  f = lambda *s, scale=1.0: jnp.asarray(scale * rng.normal(size=s), jnp.float32)
  q, k, v = f(b, h, side * side, dh, scale=0.5), f(b, h, m, dh), f(b, h, m, dh)
  pos_k = jnp.tanh(f(b, g, m, 2))
  widths = (2,) + tuple(hidden) + (heads_per_group,)
  params = [(f(i, o, scale=0.7 if i == 2 else 0.4), f(o, scale=0.1)) for i, o in zip(widths[:-1], widths[1:])]
  return q, k, v, query_positions(side, 2), pos_k, params


def _loss(impl, pos_q, query_tile, dropout_rng=None):
  def fn(q, k, v, pos_k, params):
    out, mass = cpb_attention(
      q,
      k,
      v,
      pos_q,
      pos_k,
      params,
      implementation=impl,
      query_tile=query_tile,
      dropout_rate=0.25,
      dropout_rng=dropout_rng,
    )
    return jnp.sum(jnp.sin(out)) + jnp.sum(mass**2)

  return jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2, 3, 4)))


def _assert_same_values_and_gradients(got, want):
  leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(want)]
  floor = 1e-5 * np.sqrt(sum(np.sum(x**2) for x in leaves))
  for a, b in zip(jax.tree.leaves(got), leaves):
    # <= 1e-5 relative to each leaf's norm, or to the whole gradient's for leaves that are zero
    # up to rounding (the last CPB bias: softmax is shift-invariant)
    assert np.linalg.norm(a - b) <= max(1e-5 * np.linalg.norm(b), floor)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=max(floor, 1e-6))


@pytest.mark.parametrize("query_tile", [5, 7, 36])
def test_chunked_equals_reference_values_and_gradients(query_tile):
  q, k, v, pos_q, pos_k, params = _inputs()
  want = _loss("reference", pos_q, query_tile)(q, k, v, pos_k, params)
  _assert_same_values_and_gradients(_loss("chunked", pos_q, query_tile)(q, k, v, pos_k, params), want)


@pytest.mark.parametrize(
  "query_tile,heads_per_group,hidden",
  [(5, 2, (8, 8)), (36, 1, (8, 8)), (7, 1, (8,)), (7, 2, (8, 6, 8)), (11, 1, (40, 40))],
)
def test_fused_equals_reference_values_and_gradients(query_tile, heads_per_group, hidden):
  # Covers the original's MLP (2 -> w -> w -> o), one and three hidden layers, o = 1 and 2, and
  # a hidden width over 32 (two mask words per pair).
  q, k, v, pos_q, pos_k, params = _inputs(heads_per_group=heads_per_group, hidden=hidden)
  want = _loss("reference", pos_q, query_tile)(q, k, v, pos_k, params)
  _assert_same_values_and_gradients(_loss("fused", pos_q, query_tile)(q, k, v, pos_k, params), want)


@NATIVE
@pytest.mark.parametrize("hidden", [(8, 8), (16, 16), (24, 24), (32, 32)])
def test_native_equals_reference_values_and_gradients(hidden):
  q, k, v, pos_q, pos_k, params = _inputs(heads_per_group=1, hidden=hidden)
  want = _loss("reference", pos_q, 36)(q, k, v, pos_k, params)
  _assert_same_values_and_gradients(_loss("native", pos_q, 36)(q, k, v, pos_k, params), want)


@pytest.mark.parametrize(
  "heads_per_group,hidden,dtype",
  [(2, (8, 8), jnp.float32), (1, (40, 40), jnp.float32), (1, (8, 6, 8), jnp.float32), (1, (8, 8), jnp.bfloat16)],
)
def test_native_refuses_what_it_does_not_implement_and_auto_falls_back(heads_per_group, hidden, dtype):
  q, k, v, pos_q, pos_k, params = _inputs(heads_per_group=heads_per_group, hidden=hidden)
  with pytest.raises(ValueError, match="native"):
    cpb_attention(q, k, v, pos_q, pos_k, params, implementation="native", cpb_dtype=dtype)
  got, _ = cpb_attention(q, k, v, pos_q, pos_k, params, implementation="auto", cpb_dtype=dtype)
  want, _ = cpb_attention(q, k, v, pos_q, pos_k, params, implementation="fused", query_tile=256, cpb_dtype=dtype)
  np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))


def test_fused_equals_chunked_with_attention_dropout():
  # Same dropout stream (one key per query tile), so the two tiled paths agree exactly in law
  # and to rounding in value, gradients included.
  q, k, v, pos_q, pos_k, params = _inputs()
  rng = jax.random.PRNGKey(3)
  want = _loss("chunked", pos_q, 7, rng)(q, k, v, pos_k, params)
  got = _loss("fused", pos_q, 7, rng)(q, k, v, pos_k, params)
  assert not np.isclose(float(want[0]), float(_loss("chunked", pos_q, 7)(q, k, v, pos_k, params)[0]))
  _assert_same_values_and_gradients(got, want)


def test_mask_bits_round_trip():
  from smml_jax.ops.fused_attention import pack_bits, unpack_bits

  mask = jnp.asarray(np.random.default_rng(0).random((9, 45)) > 0.5)
  words = pack_bits(mask)
  assert words.shape == (9, 2) and words.dtype == jnp.uint32
  np.testing.assert_array_equal(unpack_bits(words, 45), mask)


def test_bf16_inputs_keep_float32_logits_and_bias():
  q, k, v, pos_q, pos_k, params = _inputs()
  out32, mass32 = cpb_attention(q, k, v, pos_q, pos_k, params)
  bf = lambda t: t.astype(jnp.bfloat16)
  out16, mass16 = cpb_attention(bf(q), bf(k), bf(v), pos_q, pos_k, params, cpb_dtype=jnp.bfloat16)
  assert out16.dtype == jnp.bfloat16
  assert mass16.dtype == jnp.float32  # softmax (hence the key mass) stays float32
  np.testing.assert_allclose(np.asarray(out16, np.float32), out32, rtol=0.05, atol=0.03)
  np.testing.assert_allclose(mass16, mass32, rtol=0.03, atol=0.03)


def test_unknown_implementation_is_a_clear_error():
  q, k, v, pos_q, pos_k, params = _inputs()
  with pytest.raises(ValueError, match="unknown attention implementation"):
    cpb_attention(q, k, v, pos_q, pos_k, params, implementation="flash")


def test_bf16_model_stays_close_to_float32_with_float32_params():
  # The tiny test model, jitted, with RngBitGenerator keys (threefry param init compiles slowly on
  # CPU): the default width and op-by-op dispatch add compile time, not another code path.
  options = {**TINY_MODEL, "query_tile": 24}
  spec = build_model("subspace", num_classes=4, n_genes_tumour=5, n_genes_micro=7, feature_dim=16, options=options)
  rng = np.random.default_rng(0)
  batch = {
    "patches": jnp.asarray(rng.normal(size=(2, 64, 16)), jnp.float32),
    "genes_tumour": jnp.asarray(rng.normal(size=(2, 5)), jnp.float32),
    "genes_micro": jnp.asarray(rng.normal(size=(2, 7)), jnp.float32),
  }
  params = jax.jit(spec.module.init)({"params": jax.random.key(0, impl="rbg")}, batch)["params"]
  bf16 = spec.module.clone(dtype=jnp.bfloat16)
  # The dtypes of the bf16 model's params, traced only: a second real init costs ~7 s of CPU.
  assert all(
    p.dtype == jnp.float32
    for p in jax.tree.leaves(jax.eval_shape(bf16.init, {"params": jax.random.PRNGKey(0)}, batch)["params"])
  )
  want = jax.jit(lambda p: spec.module.apply({"params": p}, batch).logits)(params)
  got = jax.jit(lambda p: bf16.apply({"params": p}, batch).logits)(params).astype(jnp.float32)
  scale = float(jnp.max(jnp.abs(want)))
  np.testing.assert_allclose(got, want, atol=0.05 * scale + 0.02)
  np.testing.assert_array_equal(jnp.argmax(got, -1), jnp.argmax(want, -1))
