"""The native CPU kernels: the relative-position bias and the depthwise conv against their XLA
references and float64, determinism, and what happens when they cannot be built."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import NATIVE

from smml_jax.ops import native_cpb
from smml_jax.ops.cpb import query_positions, relative_position_bias
from smml_jax.ops.depthwise import depthwise_conv

pytestmark = NATIVE


def _cpb_params(d, width, seed=0):
  rng = np.random.default_rng(seed)
  f = lambda *s, scale: jnp.asarray(scale * rng.normal(size=s), jnp.float32)
  return [
    (f(d, width, scale=0.7), f(width, scale=0.1)),
    (f(width, width, scale=width**-0.5), f(width, scale=0.1)),
    (f(width, 1, scale=width**-0.5), f(1, scale=0.1)),
  ]


def _bias_case(b, g, side, m, d, width, seed=0):
  rng = np.random.default_rng(seed + 1)
  pos_q = query_positions(side, d)
  pos_k = jnp.asarray(rng.uniform(-1.3, 1.3, size=(b, g, m, d)), jnp.float32)
  pos_k = pos_k.at[0, 0, 0].set(pos_q[0])  # one distance exactly zero: sign_log' = 0 there
  cotangent = jnp.asarray(rng.normal(size=(b, g, pos_q.shape[0], m)), jnp.float32)
  return pos_q, pos_k, _cpb_params(d, width, seed), cotangent


def _value_and_grads(fn, pos_q, pos_k, params, cotangent):
  # Jitted: op by op, each gradient is ~50 small programs to trace, lower and load (tests/README.md).
  loss = lambda a, b, c, ct: jnp.sum(fn(a, b, c) * ct)
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(pos_q, pos_k, params, cotangent)


def _float64(tree):
  return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


# Fast: D = 1 (width 24) and the full-size D = 2 case (width 32). The other widths' kernels are
# checked against the XLA reference in the loop by test_ops_attention's native cases; their
# float64 comparisons here are `slow` (each case compiles its own eager float64 gradients).
@pytest.mark.parametrize(
  "b,g,side,m,d,width",
  [
    pytest.param(1, 2, 5, 9, 2, 32, marks=pytest.mark.slow),
    pytest.param(2, 3, 7, 13, 2, 16, marks=pytest.mark.slow),
    (1, 2, 11, 5, 1, 24),
    pytest.param(1, 1, 3, 2, 2, 8, marks=pytest.mark.slow),
    (2, 8, 10, 144, 2, 32),
  ],
)
def test_native_bias_matches_reference_and_is_closer_to_float64(b, g, side, m, d, width):
  pos_q, pos_k, params, cotangent = _bias_case(b, g, side, m, d, width)
  got = jax.jit(native_cpb.relative_position_bias)(pos_q, pos_k, params)
  want = jax.jit(relative_position_bias)(pos_q, pos_k, params)
  assert got.shape == want.shape == (b, g, side**d, m) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

  native_grads = _value_and_grads(native_cpb.relative_position_bias, pos_q, pos_k, params, cotangent)[1]
  xla_grads = _value_and_grads(relative_position_bias, pos_q, pos_k, params, cotangent)[1]
  with jax.enable_x64():
    exact = _value_and_grads(
      lambda a, bb, c: relative_position_bias(a, bb, c, compute_dtype=jnp.float64),
      *jax.tree.map(jnp.asarray, _float64((pos_q, pos_k, params, cotangent))),
    )[1]
  for got_leaf, xla_leaf, exact_leaf in zip(*map(jax.tree.leaves, (native_grads, xla_grads, _float64(exact)))):
    scale = np.max(np.abs(exact_leaf)) + 1e-30
    native_err = np.max(np.abs(np.asarray(got_leaf, np.float64) - exact_leaf)) / scale
    xla_err = np.max(np.abs(np.asarray(xla_leaf, np.float64) - exact_leaf)) / scale
    assert native_err <= 1e-5
    assert native_err <= max(2 * xla_err, 2e-6)  # no worse than XLA's float32 beyond rounding


def test_native_bias_with_four_coordinates_and_many_activation_regions():
  # D = 4 inputs and a first layer spread over the inputs' range: these 16 384 pairs fall in
  # ~3 300 first-layer activation regions, more than the kernel's per-item region cache holds
  # (1 536), so the later blocks take the register-tiled product path instead.
  rng = np.random.default_rng(4)
  pos_q = jnp.asarray(rng.uniform(-3, 3, size=(1024, 4)), jnp.float32)
  pos_k = jnp.asarray(rng.uniform(-3, 3, size=(1, 1, 16, 4)), jnp.float32)
  params = _cpb_params(4, 32, seed=4)
  params[0] = (params[0][0] / 0.7, params[0][1] * 10.0)  # w1 ~ N(0, 1), b1 ~ N(0, 1)
  cotangent = jnp.asarray(rng.normal(size=(1, 1, 1024, 16)), jnp.float32)
  np.testing.assert_allclose(
    jax.jit(native_cpb.relative_position_bias)(pos_q, pos_k, params),
    jax.jit(relative_position_bias)(pos_q, pos_k, params),
    rtol=1e-5,
    atol=1e-5,
  )
  got = _value_and_grads(native_cpb.relative_position_bias, pos_q, pos_k, params, cotangent)[1]
  # Against float64, not XLA's float32: with b1 ~ N(0, 1) over this range, XLA's float32 puts
  # several ReLU units within rounding of zero on the other side (its gradients are ~2e-2 of
  # their largest entry from float64 here); the kernel decides those units in float64.
  with jax.enable_x64():
    want = _value_and_grads(
      lambda a, b, c: relative_position_bias(a, b, c, compute_dtype=jnp.float64),
      *jax.tree.map(jnp.asarray, _float64((pos_q, pos_k, params, cotangent))),
    )[1]
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(_float64(want))):
    assert float(np.max(np.abs(np.asarray(a, np.float64) - b))) <= 1e-5 * np.max(np.abs(b)) + 1e-6


def test_native_bias_dead_units_pass_no_gradient():
  # A unit whose weights and bias are all zero has pre-activation +0 on every pair: inactive, as
  # relu'(0) = 0 in XLA, although its sign bit is clear and its float64 decision band is empty.
  pos_q, pos_k, params, cotangent = _bias_case(1, 2, 10, 144, 2, 32)
  (w1, b1), (w2, b2), last = params
  params = [(w1.at[:, 3].set(0.0), b1.at[3].set(0.0)), (w2.at[:, 5].set(0.0), b2.at[5].set(0.0)), last]
  got = _value_and_grads(native_cpb.relative_position_bias, pos_q, pos_k, params, cotangent)[1][2]
  (g_w1, g_b1), (g_w2, g_b2), _ = got
  want = _value_and_grads(relative_position_bias, pos_q, pos_k, params, cotangent)[1][2]
  assert float(g_b1[3]) == 0.0 and not np.any(g_w1[:, 3])
  assert float(g_b2[5]) == 0.0 and not np.any(g_w2[:, 5])
  for a, b in zip(jax.tree.leaves(((g_w1, g_b1), (g_w2, g_b2))), jax.tree.leaves(want[:2])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(np.max(np.abs(b))))


def test_native_bias_is_deterministic():
  pos_q, pos_k, params, cotangent = _bias_case(2, 8, 10, 144, 2, 32)
  grad = jax.jit(lambda a, b, c: _value_and_grads(native_cpb.relative_position_bias, a, b, c, cotangent))
  first, second = grad(pos_q, pos_k, params), grad(pos_q, pos_k, params)
  for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second)):
    np.testing.assert_array_equal(a, b)


def test_native_bias_under_vmap():
  pos_q, pos_k, params, _ = _bias_case(1, 2, 4, 6, 2, 16)
  stacked = jnp.stack([pos_k, pos_k * 0.5])
  got = jax.vmap(native_cpb.relative_position_bias, in_axes=(None, 0, None))(pos_q, stacked, params)
  for i in range(2):
    np.testing.assert_allclose(got[i], relative_position_bias(pos_q, stacked[i], params), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
  "shape,ksize,stride,padding",
  [((3, 50, 50, 8), 6, 4, 1), ((3, 7, 9, 5), 3, 2, 1), ((2, 10, 10, 4), 4, 3, 0), ((1, 5, 5, 3), 5, 1, 2)],
)
def test_native_depthwise_equals_selection_matmuls(shape, ksize, stride, padding):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(ksize, ksize, 1, shape[-1])), jnp.float32)
  bias = jnp.asarray(rng.normal(size=(shape[-1],)), jnp.float32)
  want = depthwise_conv(x, kernel, bias, stride, padding, "selection")
  got = depthwise_conv(x, kernel, bias, stride, padding, "native")
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  cotangent = jnp.asarray(rng.normal(size=want.shape), jnp.float32)
  grads = {
    impl: jax.grad(
      lambda a, k, b: jnp.sum(depthwise_conv(a, k, b, stride, padding, impl) * cotangent), argnums=(0, 1, 2)
    )(x, kernel, bias)
    for impl in ("selection", "native")
  }
  for a, b in zip(grads["native"], grads["selection"]):
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(b))))


def test_native_depthwise_refuses_1d_input():
  x = jnp.ones((2, 10, 4))
  with pytest.raises(ValueError, match="2D float32"):
    depthwise_conv(x, jnp.ones((3, 1, 4)), jnp.zeros(4), 2, 1, "native")
  assert depthwise_conv(x, jnp.ones((3, 1, 4)), jnp.zeros(4), 2, 1).shape == (2, 5, 4)


def _run_python(code, **env):
  env = {**os.environ, **env}
  return subprocess.run(
    [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=300
  )


_FALLBACK_CHECK = """
    import jax.numpy as jnp
    from smml_jax.ops import native
    from smml_jax.ops.attention import cpb_attention
    from smml_jax.ops.cpb import query_positions
    print("LOADED", native.load())
    print("REASON", native.unavailable_reason())
    q = k = v = jnp.ones((1, 1, 4, 2)); k = v = jnp.ones((1, 1, 3, 2))
    params = [(jnp.ones((2, 8)), jnp.zeros(8)), (jnp.ones((8, 8)), jnp.zeros(8)),
              (jnp.ones((8, 1)), jnp.zeros(1))]
    out, _ = cpb_attention(q, k, v, query_positions(2, 2), jnp.zeros((1, 1, 3, 2)), params,
                           implementation="auto")
    print("AUTO_OK", out.shape)
    try:
      cpb_attention(q, k, v, query_positions(2, 2), jnp.zeros((1, 1, 3, 2)), params,
                    implementation="native")
    except ValueError as e:
      print("NATIVE_ERROR", e)
"""


@pytest.mark.slow
def test_turned_off_kernels_fall_back_with_a_reason(tmp_path):
  proc = _run_python(_FALLBACK_CHECK, SMML_JAX_NATIVE="0", SMML_JAX_CACHE=str(tmp_path))
  assert proc.returncode == 0, proc.stderr
  assert "LOADED False" in proc.stdout and "SMML_JAX_NATIVE=0" in proc.stdout
  assert "AUTO_OK (1, 1, 4, 2)" in proc.stdout
  assert "NATIVE_ERROR" in proc.stdout and "could not be built" in proc.stdout


@pytest.mark.slow
def test_failed_build_falls_back_and_names_the_sources(tmp_path):
  proc = _run_python(_FALLBACK_CHECK, CXX="false", SMML_JAX_CACHE=str(tmp_path))
  assert proc.returncode == 0, proc.stderr
  assert "LOADED False" in proc.stdout and "cpb_mlp.cc" in proc.stdout
  assert "AUTO_OK (1, 1, 4, 2)" in proc.stdout
  assert not list(tmp_path.rglob("*.so"))  # no half-built library left in the cache
