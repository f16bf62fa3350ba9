"""The Pallas CPB-attention kernel: interpreted on CPU it equals `reference` in values and all
gradients; bf16 compute stays close to float32; the kernel compiles for TPU (deviceless)."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from smml_jax.ops import pallas_attention
from smml_jax.ops import pallas_attention_mlp as mlp
from smml_jax.ops.attention import cpb_attention
from smml_jax.ops.pallas_attention import pallas_cpb_attention
from tests.test_ops_attention import _assert_same_values_and_gradients, _inputs


def _loss(fn, with_pos_q=False):
  """jit(value_and_grad) of sum(sin(out)) + sum(mass^2) in q, k, v, pos_k, params (and pos_q)."""

  def loss(q, k, v, pos_k, params, pos_q):
    out, mass = fn(q, k, v, pos_q, pos_k, params)
    return jnp.sum(jnp.sin(out.astype(jnp.float32))) + jnp.sum(mass**2)

  argnums = (0, 1, 2, 3, 4, 5) if with_pos_q else (0, 1, 2, 3, 4)
  return jax.jit(jax.value_and_grad(loss, argnums=argnums))


def _pallas(query_tile=128, **kw):
  return lambda *a: pallas_cpb_attention(*a, query_tile=query_tile, interpret=True, **kw)


def _reference(**kw):
  return lambda *a: cpb_attention(*a, implementation="reference", **kw)


@pytest.mark.parametrize(
  "heads_per_group,hidden,side,m,pack",
  [
    pytest.param(1, (32, 32), 6, 5, 4, marks=pytest.mark.slow),
    (2, (8, 8), 6, 5, 4),
    pytest.param(1, (8,), 5, 5, 4, marks=pytest.mark.slow),
    pytest.param(1, (8, 6, 8), 6, 5, 4, marks=pytest.mark.slow),
    pytest.param(2, (8, 8), 12, 12, 8, marks=pytest.mark.slow),
  ],
)
def test_pallas_equals_reference_values_and_gradients(heads_per_group, hidden, side, m, pack):
  # The original's MLP (2 -> 32 -> 32 -> 1), o = 2 heads per group, one and three hidden layers;
  # N = 36 and 25 queries in one tile; 144 queries in two 128-query tiles (the last overhanging)
  # and 12 keys in two 8-key MLP steps that overlap (keys 4-7 computed twice, counted once).
  # Packed: 5 keys x 36 queries cut into 4 slices of 45 pairs (across keys), 25-query tiles
  # unpacked (gcd(4, 125) = 1), 8 keys x 128 queries into 8 slices of one key (v6e's factor).
  q, k, v, pos_q, pos_k, params = _inputs(heads_per_group=heads_per_group, hidden=hidden, side=side, m=m)
  args = (q, k, v, pos_k, params, pos_q)
  _assert_same_values_and_gradients(_loss(_pallas(mxu_pack=pack))(*args), _loss(_reference())(*args))


def test_pallas_overhanging_last_tile_ignores_undefined_rows():
  # On TPU the last tile's block reads past the N queries, memory that holds anything: the TPU
  # interpreter fills it with NaN, and nothing of it may reach the outputs or gradients.
  # 144 queries in 128-query tiles (queries lie on lanes): the second tile overhangs by 112.
  q, k, v, pos_q, pos_k, params = _inputs(heads_per_group=1, hidden=(8, 8), side=12)
  args = (q, k, v, pos_k, params, pos_q)
  nan_past_the_end = pltpu.InterpretParams(out_of_bounds_reads="uninitialized", uninitialized_memory="nan")
  got = _loss(lambda *a: pallas_cpb_attention(*a, query_tile=128, interpret=nan_past_the_end), with_pos_q=True)(*args)
  _assert_same_values_and_gradients(got, _loss(_reference(), with_pos_q=True)(*args))


def test_pallas_gradient_of_query_positions_and_dispatch(monkeypatch):
  # pos_q is a constant lattice in the model, so its gradient is only computed on demand; when
  # asked for it must be right. Also goes through cpb_attention's dispatch (interpreted on CPU),
  # and with no VMEM for the hidden activations, so the backward kernel recomputes them.
  monkeypatch.setattr(pallas_attention, "HIDDEN_VMEM_BYTES", 0)
  q, k, v, pos_q, pos_k, params = _inputs(side=5)
  args = (q, k, v, pos_k, params, pos_q)
  via_dispatch = lambda *a: cpb_attention(*a, implementation="pallas", query_tile=128)
  _assert_same_values_and_gradients(
    _loss(via_dispatch, with_pos_q=True)(*args), _loss(_reference(), with_pos_q=True)(*args)
  )


def test_pallas_dropout_equals_reference_with_the_same_key():
  q, k, v, pos_q, pos_k, params = _inputs(heads_per_group=1)
  rng = jax.random.PRNGKey(3)
  args = (q, k, v, pos_k, params, pos_q)
  want = _loss(_reference(dropout_rate=0.25, dropout_rng=rng))(*args)
  assert not np.isclose(float(want[0]), float(_loss(_reference())(*args)[0]))
  _assert_same_values_and_gradients(_loss(_pallas(dropout_rate=0.25, dropout_rng=rng))(*args), want)


def test_pallas_bf16_compute_stays_close_to_float32():
  # bf16 operands (cpb_dtype, q, k, v) against float32 `reference`; then float32 in one pass
  q, k, v, pos_q, pos_k, params = _inputs(heads_per_group=1, hidden=(32, 32))
  bf = lambda t: t.astype(jnp.bfloat16)
  args32 = (q, k, v, pos_k, params, pos_q)
  args16 = (bf(q), bf(k), bf(v), pos_k, params, pos_q)
  want = _loss(_reference())(*args32)
  got = _loss(_pallas(cpb_dtype=jnp.bfloat16))(*args16)
  out16, mass16 = _pallas(cpb_dtype=jnp.bfloat16)(bf(q), bf(k), bf(v), pos_q, pos_k, params)
  out32, mass32 = _reference()(q, k, v, pos_q, pos_k, params)
  assert out16.dtype == jnp.bfloat16 and mass16.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out16, np.float32), out32, rtol=0.05, atol=0.03)
  np.testing.assert_allclose(mass16, mass32, rtol=0.03, atol=0.03)
  # exact=False (the compiled TPU default) rounds float32 matmul operands to bf16: as close,
  # and not the exact result (the choice is really made)
  one_pass = _loss(_pallas(exact=False))(*args32)
  leaves = list(zip(jax.tree.leaves(one_pass), jax.tree.leaves(want)))
  assert any(not np.allclose(a, b, rtol=1e-5, atol=0) for a, b in leaves)
  for a, b in leaves + list(zip(jax.tree.leaves(got), jax.tree.leaves(want))):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.linalg.norm(a - b) <= 0.03 * np.linalg.norm(b) + 1e-3


def test_pack_factor_fills_the_mxu_and_divides_the_pairs():
  assert mlp.pack_for(128, (2, 32, 32, 1)) == mlp.DEFAULT_PACK == 4
  assert mlp.pack_for(256, (2, 32, 32, 1)) == 8
  assert mlp.pack_for(128, (2, 256, 1)) == 1
  assert mlp.packing(4, 8, 256) == 4  # 2048 pairs: 4 slices of 512
  assert mlp.packing(8, 5, 36) == 4  # 180 pairs
  assert mlp.packing(4, 5, 25) == 1  # 125 pairs


def test_mxu_passes_model_counts_the_packed_kernels_passes():
  widths = (2, 32, 32, 1)
  # unpacked, recomputing: 4 matmuls through a (32, 32) tile streaming every pair, and dW's
  # contraction over pairs 32 rows in a 128-row array: the model of the previous kernel
  assert mlp.mxu_passes_per_pair(widths, 128, pack=1, keep_hidden=False) == 4 + 32 / 128
  # packed 4 times: one (128, 128) tile (3/4 of it zeros) per 4 slices; hidden kept: 3 matmuls
  assert mlp.mxu_passes_per_pair(widths, 128, pack=4, keep_hidden=True) == 3 / 4 + 32 / 128
  assert mlp.mxu_passes_per_pair(widths, 256, pack=8, keep_hidden=True) == 3 / 8 + 32 / 256
  # a pack that overfills the array costs as many tiles as it needs: no gain past MXU / w
  assert mlp.mxu_passes_per_pair(widths, 128, pack=8) == 3 * 4 / 8 + 2 * 32 / 128


def test_pallas_refuses_what_it_does_not_implement():
  q, k, v, pos_q, pos_k, params = _inputs()
  with pytest.raises(ValueError, match="mxu_pack"):
    pallas_cpb_attention(q, k, v, pos_q, pos_k, params, mxu_pack=0)
  with pytest.raises(ValueError, match="float32"):
    pallas_cpb_attention(q, k, v, pos_q, pos_k, params, softmax_dtype=jnp.bfloat16)
  with pytest.raises(ValueError, match="hidden layer"):
    pallas_cpb_attention(q, k, v, pos_q, pos_k, params[-1:])
  assert pallas_attention.why_unavailable("tpu") is None
  assert pallas_attention.why_unavailable("gpu") is None  # the Triton kernels (test_ops_pallas_gpu.py)
  assert "TPU" in pallas_attention.why_unavailable("cpu")


@pytest.mark.slow
def test_pallas_equals_reference_at_the_models_full_shape():
  # 50 x 50 queries over the 12 x 12 sampled keys of one offset group, the original's MLP.
  q, k, v, pos_q, pos_k, params = _inputs(b=1, g=1, heads_per_group=1, side=50, m=144, dh=64, hidden=(32, 32))
  # Against a float64 evaluation: the last layer's weight gradient sums 360,000 pairs, and
  # `reference` in float32 is itself 7e-5 from it there (the kernel's blocked sums: 1e-7).
  args = (q, k, v, pos_k, params, pos_q)
  got = _loss(_pallas(query_tile=256))(*args)
  with jax.enable_x64(True):
    args64 = jax.tree.map(lambda x: jnp.asarray(np.asarray(x, np.float64)), args)
    want = _loss(_reference(cpb_dtype=jnp.float64, softmax_dtype=jnp.float64))(*args64)
    want = jax.tree.map(np.asarray, want)
  _assert_same_values_and_gradients(got, want)


def _tpu_topology():
  if importlib.util.find_spec("libtpu") is None:
    pytest.fail(
      "libtpu is not installed: the deviceless TPU compile needs it (pip install libtpu matching the installed jaxlib)",
      pytrace=False,
    )
  from jax.experimental import topologies

  # Compiling needs no TPU; without this, two processes using libtpu at once refuse to start.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  return topologies, topologies.get_topology_desc(platform="tpu", topology_name="v5e:2x2")


# A deviceless TPU executable is written to the persistent compilation cache (conftest.py) but
# cannot be read back without a TPU client: jax warns and compiles again, which is all it can do.
@pytest.mark.filterwarnings("ignore:Error reading persistent compilation cache entry")
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_pallas_kernel_compiles_for_tpu(dtype):
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  topologies, topology = _tpu_topology()
  mesh = topologies.make_mesh(topology, (4,), ("data",))
  b, g, n, m, dh = 4, 2, 64, 36, 64
  widths = (2, 32, 32, 1)
  pos_q = jnp.zeros((n, 2))

  def step(q, k, v, pos_k, params, rng):
    def grads(q, k, v, pos_k, rng):
      def loss(q, k, v, pos_k, params):
        out, mass = pallas_cpb_attention(
          q, k, v, pos_q, pos_k, params, dropout_rate=0.1, dropout_rng=rng[0], cpb_dtype=dtype
        )
        return jnp.sum(out.astype(jnp.float32) ** 2) + jnp.sum(mass**2)

      return jax.grad(loss, argnums=(0, 1, 2, 3, 4))(q, k, v, pos_k, params)

    return jax.shard_map(
      grads, mesh=mesh, in_specs=(P("data"),) * 4 + (P(),), out_specs=(P("data"),) * 4 + (P(),), check_vma=False
    )(q, k, v, pos_k, rng)

  data, rep = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
  spec = lambda shape, sharding=data, dt=jnp.float32: jax.ShapeDtypeStruct(shape, dt, sharding=sharding)
  params = [(spec((i, o), rep), spec((o,), rep)) for i, o in zip(widths[:-1], widths[1:])]
  args = (
    spec((b, g, n, dh), dt=dtype),
    spec((b, g, m, dh), dt=dtype),
    spec((b, g, m, dh), dt=dtype),
    spec((b, g, m, 2)),
    params,
    jax.ShapeDtypeStruct((1, 2), jnp.uint32, sharding=rep),
  )
  compiled = jax.jit(step).lower(*args).compile()
  text = compiled.as_text()
  # interpret=None chose by the compile target, not the (CPU) host: the Mosaic kernels
  assert text.count('custom_call_target="tpu_custom_call"') == 2
  assert compiled.cost_analysis()["flops"] > 0


def test_attention_impl_is_validated_when_the_model_is_configured():
  from smml_jax.models.deform_attention import DeformAttentionConfig
  from smml_jax.models.registry import build_model

  assert DeformAttentionConfig(attention_impl="pallas").attention_impl == "pallas"
  with pytest.raises(ValueError, match="attention_impl.*'flash'.*pallas"):
    build_model(
      "subspace", num_classes=4, n_genes_tumour=5, n_genes_micro=7, feature_dim=16, options={"attention_impl": "flash"}
    )


def test_query_tiles_are_lane_multiples_or_all_queries():
  # Queries lie on lanes: a tile is a multiple of 128, or the whole (shorter) query axis.
  assert pallas_attention.query_tile_for(256, 2500) == 256
  assert pallas_attention.query_tile_for(200, 2500) == 256
  assert pallas_attention.query_tile_for(32, 36) == 36
  assert pallas_attention.query_tile_for(128, 144) == 128
  assert pallas_attention.query_tile_for(256, 144) == 144
