"""Target-aware dispatch: the attention path and the depthwise conv are chosen by the platform the
computation is compiled for (ops/dispatch.py), never by the host's default backend."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smml_jax.models.registry import build_model, implementations
from smml_jax.ops import dispatch, native

TINY = {"dim": 16, "heads": 2, "dim_head": 8, "offset_groups": 2, "cpb_hidden": 8, "snn_widths": [8, 8, 8, 16]}
NATIVE_TARGETS = ("smml_cpb_bias", "smml_depthwise2d")


@pytest.mark.parametrize(
  "impl,platform,native_ok,want",
  [
    ("auto", "cpu", True, "native"),
    ("auto", "cpu", False, "fused"),
    ("auto", "tpu", True, dispatch.ACCELERATOR_ATTENTION),
    ("auto", "gpu", True, dispatch.ACCELERATOR_ATTENTION),
    ("auto", None, True, "auto"),
    ("reference", "tpu", True, "reference"),
    ("fused", "cpu", True, "fused"),
    ("native", "cpu", True, "native"),
    ("native", None, True, "native"),
  ],
)
def test_resolve_attention_by_platform(impl, platform, native_ok, want):
  assert dispatch.resolve_attention(impl, platform, native_supported=native_ok) == want


def test_native_on_an_accelerator_and_unknown_names_are_refused():
  with pytest.raises(dispatch.DispatchError, match="CPU only.*'tpu'"):
    dispatch.resolve_attention("native", "tpu", native_supported=True)
  with pytest.raises(dispatch.DispatchError, match="unknown attention implementation 'flash'"):
    dispatch.resolve_attention("flash", "cpu", native_supported=True)


@pytest.mark.parametrize(
  "attention,conv",
  [
    ("native", "native"),
    ("auto", "auto"),
    ("fused", "selection"),
    ("reference", "selection"),
    ("chunked", "selection"),
  ],
)
def test_the_attention_choice_governs_the_depthwise_conv(attention, conv):
  assert dispatch.depthwise_for(attention) == conv


@pytest.mark.parametrize(
  "sampler,platform,want",
  [("auto", "tpu", "matmul"), ("auto", "gpu", "gather"), ("auto", "cpu", "gather"), ("auto", None, "gather")]
  + [("gather", "tpu", "gather"), ("matmul", "cpu", "matmul")],
)
def test_resolve_sampler_by_platform(sampler, platform, want):
  assert dispatch.resolve_sampler(sampler, platform) == want


def test_unknown_sampler_is_refused_where_it_is_configured():
  with pytest.raises(dispatch.DispatchError, match="unknown sampler 'nearest'"):
    dispatch.resolve_sampler("nearest", "tpu")
  with pytest.raises(ValueError, match="sampler: unknown sampler 'nearest'"):
    build_model(
      "subspace",
      num_classes=3,
      n_genes_tumour=5,
      n_genes_micro=6,
      feature_dim=8,
      options=TINY,
      impl={"sampler": "nearest"},
    )


def test_platform_of_a_mesh_and_of_devices():
  from smml_jax.train import sharding

  assert dispatch.platform_of(sharding.make_mesh(jax.devices()[:1])) == "cpu"
  assert dispatch.platform_of(jax.devices()) == "cpu"


def _lowered_text(impl):
  spec = build_model(
    "subspace", num_classes=3, n_genes_tumour=5, n_genes_micro=6, feature_dim=8, options=TINY, impl=impl
  )
  batch = {"patches": jnp.ones((2, 64, 8)), "genes_tumour": jnp.ones((2, 5)), "genes_micro": jnp.ones((2, 6))}
  params = jax.eval_shape(lambda: spec.module.init(jax.random.PRNGKey(0), batch))

  def loss(p):
    return spec.module.apply(p, batch).logits.sum()

  return spec, jax.jit(jax.grad(loss)).lower(params).as_text()


needs_native = pytest.mark.skipif(not native.load(), reason="native kernels not built here")


@needs_native
@pytest.mark.parametrize("impl", [{"attention_impl": "auto", "platform": "cpu"}, {"attention_impl": "auto"}])
def test_auto_runs_the_native_kernels_on_the_cpu(impl):
  spec, text = _lowered_text(impl)
  for target in NATIVE_TARGETS:
    assert target in text
  want = "native" if "platform" in impl else "auto"
  assert implementations(spec)["attention"] == want


@needs_native
@pytest.mark.parametrize(
  "impl",
  [
    {"attention_impl": "reference"},
    {"attention_impl": "fused"},
    {"attention_impl": "auto", "platform": "tpu"},
    {"attention_impl": "auto", "platform": "gpu"},
  ],
)
def test_other_paths_and_other_platforms_run_no_native_kernel(impl):
  """An explicit XLA path governs the depthwise conv too, and a TPU/GPU target is honoured on
  this CPU host (whose default backend would pick the native kernels)."""
  spec, text = _lowered_text(impl)
  for target in NATIVE_TARGETS:
    assert target not in text
  record = implementations(spec)
  assert record["depthwise"] == "selection"
  assert record["attention"] == ("fused" if impl["attention_impl"] == "auto" else impl["attention_impl"])
  assert record["sampler"] == ("matmul" if impl.get("platform") == "tpu" else "gather")
  assert record["branches"] == "stacked"
  assert ("gather" in text) == (record["sampler"] == "gather")


def test_native_for_a_tpu_model_is_a_clear_error():
  with pytest.raises(dispatch.DispatchError, match="CPU only"):
    _lowered_text({"attention_impl": "native", "platform": "tpu"})


def test_auto_without_a_platform_is_resolved_where_it_is_lowered():
  """`jax.lax.platform_dependent` keeps both branches; lowering for the CPU keeps the CPU one,
  and the result equals the explicit paths'."""
  from smml_jax.ops.attention import cpb_attention
  from smml_jax.ops.cpb import query_positions

  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.normal(size=(1, 2, 16, 4)), jnp.float32)
  k = v = jnp.asarray(rng.normal(size=(1, 2, 9, 4)), jnp.float32)
  pos_k = jnp.asarray(rng.uniform(-1, 1, size=(1, 2, 9, 2)), jnp.float32)
  params = [
    (jnp.asarray(rng.normal(size=s), jnp.float32), jnp.asarray(rng.normal(size=s[1:]), jnp.float32))
    for s in ((2, 8), (8, 8), (8, 1))
  ]
  out = {
    impl: cpb_attention(q, k, v, query_positions(4, 2), pos_k, params, query_tile=8, implementation=impl)[0]
    for impl in ("auto", "reference")
  }
  np.testing.assert_allclose(out["auto"], out["reference"], rtol=1e-5, atol=1e-6)
