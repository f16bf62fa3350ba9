"""Every CPB attention path against a float64 evaluation of the same function, on random inputs.

The function: softmax(q k^T + CPB(pos_q - pos_k)) v, with the original's 2 -> 32 -> 32 -> 1 CPB MLP
(torch default init), query positions of a side x side lattice and key positions on a jittered
(learned-offset-like) lattice, as the attention module forms them. Checked per path: the output,
and the gradients w.r.t. q, k, v, the key positions and all six CPB weight arrays, each against
the reference path run in float64 on the same (float32-representable) inputs.

Tolerance, per array: max |got - exact| <= RTOL * max |exact| + flip bound.
* RTOL = 1e-5 is float32 rounding of these functions at small sizes. The CPB weight gradients
  are sums over all P pairs, which XLA reduces in float32: their rounding grows like a random
  walk, eps32 * sqrt(P) of the result's scale (2e-4 at the full grid, batch 3; measured there:
  reference 2.8e-5 on grad w3). The XLA paths get max(RTOL, eps32 * sqrt(P)).
* The flip bound covers the ReLU kinks: a hidden unit whose pre-activation lies within rounding of
  zero may take either side in any float32 evaluation, and the gradient then jumps by that unit's
  whole contribution. `_flip_bounds` sums, in float64, the magnitudes of those contributions for
  the units within NEAR of zero relative to their terms' scale (NEAR far above float32 rounding);
  it is zero when no unit is that close (the usual case on the small grids).
* The native kernels sum in double and decide the units within their own such band in float64, so they get no flip
  bound: RTOL alone (`STRICT`). `test_cpb_paths_at_relu_kinks` puts 64 units exactly at a kink.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smml_jax.ops import native
from smml_jax.ops.attention import _attend_with_bias, cpb_attention
from smml_jax.ops.cpb import query_positions, relative_position_bias

RTOL = 1e-5
NEAR = 1e-5
WIDTH = 32
STRICT = ("native",)  # paths that must match float64 through the ReLU kinks too


def _native_available() -> bool:
  return native.load()


# A path whose kernel has not landed, or cannot run here, is skipped with the reason. The Pallas
# path (attention_impl "pallas") joins this list when it lands.
PATHS = [
  "reference",
  "chunked",
  "fused",
  pytest.param("native", marks=pytest.mark.skipif(not _native_available(), reason="no native kernels on this machine")),
]


def _case(seed, batch, side, keys_side, groups=8, dim_head=4):
  """Inputs like the attention module's: float32 numpy arrays."""
  rng = np.random.default_rng(seed)
  f32 = lambda a: np.asarray(a, np.float32)

  def torch_linear(fan_in, fan_out):
    bound = fan_in**-0.5
    return (f32(rng.uniform(-bound, bound, (fan_in, fan_out))), f32(rng.uniform(-bound, bound, (fan_out,))))

  params = [torch_linear(2, WIDTH), torch_linear(WIDTH, WIDTH), torch_linear(WIDTH, 1)]
  n, m = side * side, keys_side * keys_side
  oy, ox = np.meshgrid(np.arange(keys_side), np.arange(keys_side), indexing="ij")
  grid = np.stack([ox.reshape(-1), oy.reshape(-1)], -1).astype(np.float64)
  offsets = 4.0 * np.tanh(rng.normal(0, 0.3, (batch, groups, m, 2)))  # offset scale 4, as the module
  pos_k = f32(2.0 * (grid + offsets) / (keys_side - 1) - 1.0)
  q = f32(rng.normal(0, 0.125 * 8**0.5, (batch, groups, n, dim_head)))
  k = f32(rng.normal(size=(batch, groups, m, dim_head)))
  v = f32(rng.normal(size=(batch, groups, m, dim_head)))
  cot = f32(rng.normal(size=(batch, groups, n, dim_head)))
  return dict(q=q, k=k, v=v, pos_q=np.asarray(query_positions(side, 2)), pos_k=pos_k, params=params, cot=cot)


def _t64(case, b, g, i, j):
  """The MLP input of pair (query i, key j) of row (b, g), in float64 from the float32 positions."""
  delta = np.asarray(case["pos_q"][i], np.float64) - np.asarray(case["pos_k"][b, g, j], np.float64)
  return np.sign(delta) * np.log1p(np.abs(delta))


def _with_kinks(case, seed):
  """`case` with b1 and b2 moved so that each hidden unit sits on its ReLU kink at one pair.

  b1_i (then b2_j) is the float32 nearest to minus the unit's other terms at a random pair, so
  the unit's float64 pre-activation there is below float32 rounding: float32 evaluations take
  either side.
  """
  rng = np.random.default_rng(seed)
  batch, groups, m, _ = case["pos_k"].shape
  n = case["pos_q"].shape[0]
  (w1, b1), (w2, b2), last = [tuple(np.asarray(a, np.float64) for a in layer) for layer in case["params"]]
  pick = lambda: (rng.integers(batch), rng.integers(groups), rng.integers(n), rng.integers(m))
  b1 = b1.copy()
  for i in range(WIDTH):
    b1[i] = np.float32(-(_t64(case, *pick()) @ w1[:, i]))
  b2 = b2.copy()
  for j in range(WIDTH):
    h1 = np.maximum(_t64(case, *pick()) @ w1 + b1, 0.0)
    b2[j] = np.float32(-(h1 @ w2[:, j]))
  f32 = lambda a: np.asarray(a, np.float32)
  params = [(f32(w1), f32(b1)), (f32(w2), f32(b2)), tuple(f32(a) for a in last)]
  return {**case, "params": params}


def _grads(case, impl, dtype):
  """Output and gradients w.r.t. (q, k, v, pos_k, params) of sum(out * cot)."""
  c = jax.tree.map(lambda a: jnp.asarray(a, dtype), case)

  def scalar(q, k, v, pos_k, params):
    out, _ = cpb_attention(
      q, k, v, c["pos_q"], pos_k, params, implementation=impl, query_tile=32, softmax_dtype=dtype, cpb_dtype=dtype
    )
    return jnp.sum(out * c["cot"]), out

  (_, out), grads = jax.jit(jax.value_and_grad(scalar, argnums=(0, 1, 2, 3, 4), has_aux=True))(
    c["q"], c["k"], c["v"], c["pos_k"], c["params"]
  )
  return [np.asarray(x, np.float64) for x in jax.tree.leaves((out, grads))]


def _exact(case):
  """The reference path in float64: output, gradients and the bias cotangent (B, G, N, M)."""
  with jax.enable_x64():
    c = jax.tree.map(lambda a: jnp.asarray(np.asarray(a, np.float64)), case)
    leaves = _grads(case, "reference", jnp.float64)
    bias = relative_position_bias(c["pos_q"], c["pos_k"], c["params"], compute_dtype=jnp.float64)
    n = c["q"].shape[2]
    _, vjp = jax.vjp(
      lambda b: _attend_with_bias(c["q"], c["k"], c["v"], b, jnp.ones((n,), bool), 0.0, None, jnp.float64)[0], bias
    )
    g_bias = np.asarray(vjp(c["cot"])[0])
  return leaves, g_bias


def _flip_bounds(case, g_bias):
  """Per gradient array, a float64 bound on what ReLU units within NEAR of zero can move it.

  Layer 2 unit j of pair p, flipped, moves dW2[:, j] by h1_p g_p w3_j, db2[j] by g_p w3_j and,
  through dh1_p = g_p w3_j W2[:, j], layer 1's gradients and d t_p. Layer 1 unit i, flipped, moves
  dW1[:, i] by t_p dh1_pi, db1[i] by dh1_pi, d t_p by dh1_pi W1[i] and dW2[i] by h1_pi dz2_p
  (h1_pi < NEAR * scale). Returns zeros for the q, k, v gradients and the output: a flip moves the
  bias by at most |w3_j z2_pj|, far below rounding.
  """
  (w1, b1), (w2, b2), (w3, _) = [tuple(np.asarray(a, np.float64) for a in layer) for layer in case["params"]]
  pos_q = np.asarray(case["pos_q"], np.float64)
  pos_k = np.asarray(case["pos_k"], np.float64)
  batch, groups, m, _ = pos_k.shape
  t_max = np.log1p(np.max(np.abs(pos_q), 0) + np.max(np.abs(pos_k), (0, 1, 2))).max()
  scale1 = np.abs(b1) + t_max * np.abs(w1).sum(0)
  scale2 = np.abs(b2) + np.abs(w2).T @ scale1
  bw1, bb1, bw2, bb2 = np.zeros_like(w1), np.zeros_like(b1), np.zeros_like(w2), np.zeros_like(b2)
  b_pos_k = np.zeros_like(pos_k)
  for b in range(batch):
    for g in range(groups):
      delta = pos_q[:, None, :] - pos_k[b, g][None]  # (N, M, 2)
      t = (np.sign(delta) * np.log1p(np.abs(delta))).reshape(-1, 2)
      slope = np.where(delta == 0, 0.0, 1.0 / (1.0 + np.abs(delta))).reshape(-1, 2)
      gp = g_bias[b, g].reshape(-1)
      z1 = t @ w1 + b1
      h1 = np.maximum(z1, 0.0)
      z2 = h1 @ w2 + b2
      near1 = np.abs(z1) < NEAR * scale1
      near2 = np.abs(z2) < NEAR * scale2
      if not (near1.any() or near2.any()):
        continue
      dz2 = gp[:, None] * w3[:, 0] * (z2 > 0)
      u2 = np.abs(gp)[:, None] * np.abs(w3[:, 0]) * near2  # layer-2 flips
      a1 = (u2 @ np.abs(w2).T) * ((z1 > 0) | near1)
      u1 = np.abs(dz2 @ w2.T) * near1  # layer-1 flips
      bw2 += h1.T @ u2 + (np.abs(z1) * near1).T @ np.abs(dz2)
      bb2 += u2.sum(0)
      bw1 += np.abs(t).T @ (a1 + u1)
      bb1 += (a1 + u1).sum(0)
      b_t = ((a1 + u1) @ np.abs(w1).T) * slope  # d delta = d t * slope; delta = q - k
      b_pos_k[b, g] += b_t.reshape(delta.shape).sum(0)
  zeros = lambda name: np.zeros_like(np.asarray(case[name], np.float64))
  return [
    zeros("cot"),
    zeros("q"),
    zeros("k"),
    zeros("v"),
    b_pos_k,
    bw1,
    bb1,
    bw2,
    bb2,
    np.zeros((WIDTH, 1)),
    np.zeros(1),
  ]


NAMES = [
  "out",
  "grad q",
  "grad k",
  "grad v",
  "grad pos_k",
  "grad w1",
  "grad b1",
  "grad w2",
  "grad b2",
  "grad w3",
  "grad b3",
]


def _failures(case, impl, exact, g_bias, bounds):
  """What `impl` gets wrong against the float64 `exact` leaves (an empty list when nothing)."""
  got = _grads(case, impl, jnp.float32)
  pairs = g_bias.size
  rtol = RTOL if impl in STRICT else max(RTOL, float(np.finfo(np.float32).eps) * pairs**0.5)
  failures = []
  for name, a, e, bound in zip(NAMES, got, exact, bounds):
    assert a.shape == e.shape, name
    err = np.abs(a - e).max()
    allowed = rtol * np.abs(e).max() + (0.0 if impl in STRICT else bound.max())
    if name == "grad b3":  # mathematically zero (softmax is shift invariant): rounding only
      allowed = rtol * np.abs(g_bias).sum()
    if not err <= allowed:
      failures.append(
        f"{impl} {name}: max abs error {err:.3g} > {allowed:.3g} "
        f"({err / max(np.abs(e).max(), 1e-300):.3g} of its largest entry)"
      )
  return failures


def _check(case, *impls):
  """Every path in `impls` against one float64 evaluation of `case` (the costly part)."""
  exact, g_bias = _exact(case)
  bounds = _flip_bounds(case, g_bias)
  failures = [f for impl in impls for f in _failures(case, impl, exact, g_bias, bounds)]
  assert not failures, "; ".join(failures)


@pytest.mark.parametrize("impl", PATHS)
# Batch sizes 1 and 4 in the developer loop; the others add seeds, not new code paths.
@pytest.mark.parametrize(
  "seed,batch", [(0, 1), pytest.param(1, 2, marks=pytest.mark.slow), pytest.param(2, 3, marks=pytest.mark.slow), (3, 4)]
)
def test_cpb_paths_match_float64_small_grid(impl, seed, batch):
  _check(_case(seed, batch, side=10, keys_side=3), impl)


@pytest.mark.parametrize("impl", PATHS)
@pytest.mark.parametrize("seed,batch", [(4, 1), pytest.param(5, 3, marks=pytest.mark.slow)])
def test_cpb_paths_at_relu_kinks(impl, seed, batch):
  _check(_with_kinks(_case(seed, batch, side=10, keys_side=3), seed), impl)


@pytest.mark.slow
@pytest.mark.parametrize("seed,batch", [(11, 1), (12, 2)])
def test_cpb_paths_match_float64_full_grid(seed, batch):
  # One test for all paths: the float64 reference and flip bounds of the 2500 x 144 grid take
  # ~70 s of CPU, ten times one float32 path, so they are evaluated once per case. Batch 2, not 3:
  # at batch 3 the float64 evaluation peaks at ~19.5 GB and was OOM-killed beside the other xdist
  # worker on the 23 GB CI machine; batch 3 is checked on the small grid.
  impls = ["reference", "chunked", "fused"] + (["native"] if _native_available() else [])
  _check(_case(seed, batch, side=50, keys_side=12, dim_head=8), *impls)
