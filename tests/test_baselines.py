"""Comparison baselines: shapes, jit, gradients and each model's distinctive mechanism."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from smml_jax.models.baselines import BASELINES, build_baseline
from smml_jax.models.baselines.mcat import default_group_sizes
from smml_jax.models.baselines.pathomic import Bilinear, kronecker_fusion
from smml_jax.models.outputs import ModelOutput

B, N, D, GT, GM, K = 2, 16, 32, 7, 11, 4
NAMES = sorted(BASELINES)


def make_batch(seed: int = 0) -> dict[str, jax.Array]:
  kp, kt, km = jax.random.split(jax.random.PRNGKey(seed), 3)
  return {
    "patches": jax.random.normal(kp, (B, N, D)),
    "genes_tumour": jax.random.normal(kt, (B, GT)),
    "genes_micro": jax.random.normal(km, (B, GM)),
  }


def key(seed: int) -> jax.Array:
  # RngBitGenerator keys: threefry dropout masks make XLA compile several times slower on CPU.
  return jax.random.key(seed, impl="rbg")


def build(name: str, **overrides):
  return build_baseline(name, num_classes=K, n_genes_tumour=GT, n_genes_micro=GM, feature_dim=D, **overrides)


@functools.lru_cache(maxsize=None)
def model_and_params(name: str):
  model = build(name)
  params = jax.jit(model.init)({"params": key(1)}, make_batch())["params"]
  return model, params


@functools.lru_cache(maxsize=None)
def step(name: str):
  """One compiled program per model (compiling dominates the runtime here).

  (params, batch, labels, key) -> (eval output, eval intermediates, train output, grads of the
  train-mode cross-entropy).
  """
  model, _ = model_and_params(name)

  @jax.jit
  def run(params, batch, labels, dropout_key):
    eval_out, state = model.apply({"params": params}, batch, mutable=["intermediates"])

    def loss_fn(p):
      out = model.apply({"params": p}, batch, train=True, rngs={"dropout": dropout_key})
      return optax.softmax_cross_entropy_with_integer_labels(out.logits, labels).mean(), out

    (_, train_out), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return eval_out, state.get("intermediates", {}), train_out, grads

  return run


LABELS = jnp.array([0, 3])


def apply(name: str, batch, *, seed: int = 0):
  """(eval output, eval intermediates, train output, grads) of model `name` on `batch`."""
  _, params = model_and_params(name)
  return step(name)(params, batch, LABELS, key(seed))


def logits_close(a: jax.Array, b: jax.Array) -> bool:
  return bool(np.allclose(a, b, atol=1e-5, rtol=1e-5))


# The mcat step takes ~30 s of CPU to compile; its two tests share it on one xdist worker.
MCAT_STEP = pytest.mark.xdist_group("mcat_step")


@pytest.mark.parametrize("name", [pytest.param(n, marks=MCAT_STEP) if n == "mcat" else n for n in NAMES])
def test_forward_jit_and_gradients(name):
  _, params = model_and_params(name)
  batch = make_batch()
  eval_out, _, train_a, grads = apply(name, batch, seed=2)
  eval_again, _, train_b, _ = apply(name, batch, seed=3)
  for out in (eval_out, train_a):
    assert isinstance(out, ModelOutput)
    chex.assert_shape(out.logits, (B, K))
    chex.assert_type(out.logits, jnp.float32)
    chex.assert_tree_all_finite(out.logits)
    chex.assert_rank(out.features, 2)
    chex.assert_axis_dimension(out.features, 0, B)
  # Eval ignores the dropout rng; train mode draws from it.
  chex.assert_trees_all_equal(eval_out.logits, eval_again.logits)
  assert not logits_close(train_a.logits, train_b.logits)
  assert not logits_close(eval_out.logits, train_a.logits)

  chex.assert_tree_all_finite(grads)
  chex.assert_trees_all_equal_shapes(grads, params)
  assert float(jnp.abs(grads["classifier"]["kernel"]).max()) > 0.0
  assert float(jnp.abs(grads["classifier"]["bias"]).max()) > 0.0
  # The loss reaches (almost) every parameter, not just the head.
  leaves = jax.tree_util.tree_leaves(grads)
  nonzero = [g for g in leaves if float(jnp.abs(g).max()) > 0.0]
  assert len(nonzero) >= 0.9 * len(leaves), (name, len(nonzero), len(leaves))


def test_eval_needs_no_dropout_rng():
  batch = make_batch()
  for name in NAMES:
    model, params = model_and_params(name)
    out = jax.eval_shape(lambda p, b: model.apply({"params": p}, b), params, batch)
    chex.assert_shape(out.logits, (B, K))


def test_abmil_matches_numpy_gated_attention():
  model, params = model_and_params("abmil")
  batch = make_batch(seed=9)
  out, _, _, _ = apply("abmil", batch)
  p = jax.tree.map(np.asarray, params)
  dense = lambda x, layer: x @ layer["kernel"] + layer["bias"]
  h = np.maximum(dense(np.asarray(batch["patches"]), p["patch_projection"]["dense"]), 0.0)
  att = p["gated_attention"]
  gated = np.tanh(dense(h, att["attention_v"])) / (1 + np.exp(-dense(h, att["attention_u"])))
  scores = dense(gated, att["attention_w"])[..., 0]
  weights = np.exp(scores - scores.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  pooled = (weights[..., None] * h).sum(1)
  chex.assert_trees_all_close(out.attn_tumour, weights, atol=1e-5)
  chex.assert_trees_all_close(out.features, pooled, atol=1e-4, rtol=1e-4)
  chex.assert_trees_all_close(out.logits, dense(pooled, p["classifier"]), atol=1e-4, rtol=1e-4)
  assert model.attention_hidden == att["attention_v"]["kernel"].shape[1]


def test_abmil_attention_sums_to_one_and_is_permutation_invariant():
  batch = make_batch(seed=9)
  out, _, _, _ = apply("abmil", batch)
  chex.assert_shape(out.attn_tumour, (B, N))
  assert bool((out.attn_tumour >= 0).all())
  chex.assert_trees_all_close(out.attn_tumour.sum(-1), jnp.ones(B), atol=1e-6)
  perm = np.random.default_rng(0).permutation(N)
  permuted, _, _, _ = apply("abmil", {**batch, "patches": batch["patches"][:, perm]})
  chex.assert_trees_all_close(permuted.logits, out.logits, atol=1e-5)
  chex.assert_trees_all_close(permuted.attn_tumour, out.attn_tumour[:, perm], atol=1e-6)
  # Histology only: the genes never enter.
  other = make_batch(seed=10)
  regened, _, _, _ = apply(
    "abmil", {**batch, "genes_tumour": other["genes_tumour"], "genes_micro": other["genes_micro"]}
  )
  chex.assert_trees_all_equal(regened.logits, out.logits)


def test_snn_baseline_ignores_patches_and_reads_genes():
  batch = make_batch(seed=12)
  other = make_batch(seed=13)
  out, _, _, _ = apply("snn", batch)
  new_patches, _, _, _ = apply("snn", {**batch, "patches": other["patches"]})
  chex.assert_trees_all_equal(new_patches.logits, out.logits)
  model, params = model_and_params("snn")
  no_patches = {"genes_tumour": batch["genes_tumour"], "genes_micro": batch["genes_micro"]}
  no_patches_out = jax.jit(lambda p, b: model.apply({"params": p}, b))(params, no_patches)
  chex.assert_trees_all_close(no_patches_out.logits, out.logits, atol=1e-6)
  for name in ("genes_tumour", "genes_micro"):
    changed, _, _, _ = apply("snn", {**batch, name: other[name]})
    assert not logits_close(changed.logits, out.logits), name


def test_concat_depends_on_both_modalities():
  batch = make_batch(seed=14)
  other = make_batch(seed=15)
  out, _, _, _ = apply("concat", batch)
  chex.assert_shape(out.features, (B, 256 + 128))
  for name in ("patches", "genes_tumour", "genes_micro"):
    changed, _, _, _ = apply("concat", {**batch, name: other[name]})
    assert not logits_close(changed.logits, out.logits), name
  # Changing only the genes leaves the (mean-pooled) histology half of the features alone.
  genes_only, _, _, _ = apply("concat", {**batch, "genes_micro": other["genes_micro"]})
  chex.assert_trees_all_close(genes_only.features[:, :256], out.features[:, :256], atol=1e-6)
  perm = np.random.default_rng(1).permutation(N)
  permuted, _, _, _ = apply("concat", {**batch, "patches": batch["patches"][:, perm]})
  chex.assert_trees_all_close(permuted.logits, out.logits, atol=1e-5)


def test_kronecker_fusion_contains_unimodal_vectors():
  kp, kg = jax.random.split(jax.random.PRNGKey(16))
  h_path, h_gene = jax.random.normal(kp, (B, 5)), jax.random.normal(kg, (B, 3))
  fused = kronecker_fusion(h_path, h_gene)
  chex.assert_shape(fused, (B, (5 + 1) * (3 + 1)))
  grid = fused.reshape(B, 6, 4)
  chex.assert_trees_all_close(grid[:, :5, :3], h_path[:, :, None] * h_gene[:, None, :])
  chex.assert_trees_all_close(grid[:, 5, :3], h_gene)  # The appended-1 row of the path vector.
  chex.assert_trees_all_close(grid[:, :5, 3], h_path)  # The appended-1 column of the gene one.
  chex.assert_trees_all_equal(grid[:, 5, 3], jnp.ones(B))


def test_pathomic_fusion_features():
  model, _ = model_and_params("pathomic")
  dp, dg = model.path_fusion_dim, model.gene_fusion_dim
  batch = make_batch(seed=17)
  out, inter, _, _ = apply("pathomic", batch)
  (o_path,), (o_gene,), (fused,) = inter["gated_path"], inter["gated_gene"], inter["kronecker"]
  chex.assert_shape(o_path, (B, dp))
  chex.assert_shape(o_gene, (B, dg))
  chex.assert_shape(fused, (B, (dp + 1) * (dg + 1)))
  grid = fused.reshape(B, dp + 1, dg + 1)
  chex.assert_trees_all_close(grid[:, dp, :dg], o_gene)
  chex.assert_trees_all_close(grid[:, :dp, dg], o_path)
  chex.assert_shape(out.features, (B, model.fusion_hidden))
  chex.assert_trees_all_close(out.attn_tumour.sum(-1), jnp.ones(B), atol=1e-6)
  # The gates see both modalities: the gated histology vector moves with the genes.
  other = make_batch(seed=18)
  _, inter2, _, _ = apply("pathomic", {**batch, "genes_micro": other["genes_micro"]})
  assert not np.allclose(inter2["gated_path"][0], o_path)


def test_bilinear_gate_is_torch_bilinear():
  x1 = jax.random.normal(jax.random.PRNGKey(21), (B, 4))
  x2 = jax.random.normal(jax.random.PRNGKey(22), (B, 3))
  layer = Bilinear(5)
  params = layer.init(jax.random.PRNGKey(23), x1, x2)["params"]
  w, b = np.asarray(params["kernel"]), np.asarray(params["bias"])
  expected = np.array([[x1[i] @ w[k] @ x2[i] + b[k] for k in range(5)] for i in range(B)])
  chex.assert_trees_all_close(layer.apply({"params": params}, x1, x2), expected, atol=1e-5)
  model = build("pathomic", bilinear_gate=True, path_fusion_dim=6, gene_fusion_dim=4)
  shapes = jax.eval_shape(model.init, key(0), make_batch())["params"]
  assert shapes["gate_path"]["gate"]["kernel"].shape == (6, model.path_hidden, 128)
  out = jax.eval_shape(lambda: model.apply(model.init(key(0), make_batch()), make_batch(), mutable=["intermediates"]))
  chex.assert_shape(out[1]["intermediates"]["kronecker"][0], (B, 7 * 5))


@MCAT_STEP
def test_mcat_coattention_weights_sum_to_one_per_token():
  batch = make_batch(seed=19)
  out, _, train_out, _ = apply("mcat", batch)
  groups = default_group_sizes(GT, GM, 5)
  assert groups[0] == GT and sum(groups) == GT + GM and len(groups) == 6
  for o in (out, train_out):
    chex.assert_shape(o.attn_micro, (B, 1, len(groups), N))
    chex.assert_trees_all_close(o.attn_micro.sum(-1), jnp.ones((B, 1, len(groups))), atol=1e-6)
  chex.assert_shape(out.features, (B, 512))
  # Patches enter only through attention over the bag: permuting them permutes the weights.
  perm = np.random.default_rng(2).permutation(N)
  permuted, _, _, _ = apply("mcat", {**batch, "patches": batch["patches"][:, perm]})
  chex.assert_trees_all_close(permuted.logits, out.logits, atol=1e-5)
  chex.assert_trees_all_close(permuted.attn_micro, out.attn_micro[..., perm], atol=1e-6)


@pytest.mark.slow
def test_mcat_custom_groups_and_heads():
  model = build(
    "mcat",
    group_sizes=(3, 4, 11),
    coattn_heads=2,
    embed_dim=32,
    num_layers=1,
    gene_widths=(32, 32),
    ff_hidden=64,
    attention_hidden=16,
    fusion_hidden=16,
  )
  batch = make_batch(seed=20)
  variables = jax.jit(model.init)({"params": key(3)}, batch)
  capture = jax.jit(lambda v, b: model.apply(v, b, capture_intermediates=True, mutable=["intermediates"]))
  out, s1 = capture(variables, batch)
  chex.assert_shape(out.attn_micro, (B, 2, 3, N))
  chex.assert_trees_all_close(out.attn_micro.sum(-1), jnp.ones((B, 2, 3)), atol=1e-6)
  assert variables["params"]["group_snn_1"]["dense_0"]["kernel"].shape == (4, 32)
  # Gene 5 is in group 1 (genes 3-6): changing it moves token 1 and leaves token 0 alone.
  changed = {**batch, "genes_tumour": batch["genes_tumour"].at[:, 5].add(3.0)}
  _, s2 = capture(variables, changed)
  token = lambda s, g: s["intermediates"][f"group_snn_{g}"]["__call__"][0]
  chex.assert_trees_all_equal(token(s1, 0), token(s2, 0))
  chex.assert_trees_all_equal(token(s1, 2), token(s2, 2))
  assert not np.allclose(token(s1, 1), token(s2, 1))
  with pytest.raises(ValueError, match="sum to 17"):
    jax.eval_shape(build("mcat", group_sizes=(3, 3, 11)).init, key(0), batch)


def test_build_baseline_errors():
  with pytest.raises(ValueError, match="valid names: .*'abmil'.*'mcat'"):
    build("transmil")
  with pytest.raises(ValueError, match="no attribute.*'hiden'"):
    build("abmil", hiden=3)
  model = build("concat")
  bad = {**make_batch(), "patches": jnp.ones((B, N, D + 1))}
  with pytest.raises(ValueError, match=r"batch\['patches'\].*last axis 32"):
    jax.eval_shape(model.init, key(0), bad)
  missing = {k: v for k, v in make_batch().items() if k != "genes_micro"}
  with pytest.raises(ValueError, match="no field 'genes_micro'"):
    jax.eval_shape(model.init, key(0), missing)
  assert not hasattr(build("abmil"), "n_genes_tumour")
  assert build("snn").n_genes_micro == GM
