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
from smml_jax.models.baselines.pathomic import kronecker_fusion
from smml_jax.models.outputs import ModelOutput

B, N, D, GT, GM, K = 2, 16, 32, 7, 11, 4
NAMES = sorted(BASELINES)


def make_batch(seed: int = 0, n: int = N) -> dict[str, jax.Array]:
  kp, kt, km = jax.random.split(jax.random.PRNGKey(seed), 3)
  return {"patches": jax.random.normal(kp, (B, n, D)),
          "genes_tumour": jax.random.normal(kt, (B, GT)),
          "genes_micro": jax.random.normal(km, (B, GM))}


def build(name: str, **overrides):
  return build_baseline(name, num_classes=K, n_genes_tumour=GT, n_genes_micro=GM,
                        feature_dim=D, **overrides)


# Everything runs jitted (cached per model and mode): eager Flax dispatch is far slower on CPU.
@functools.lru_cache(maxsize=None)
def model_and_params(name: str):
  model = build(name)
  params = jax.jit(model.init)({"params": jax.random.PRNGKey(1)}, make_batch())["params"]
  return model, params


@functools.lru_cache(maxsize=None)
def forward(name: str, train: bool):
  model, _ = model_and_params(name)
  return jax.jit(lambda params, batch, key: model.apply(
      {"params": params}, batch, train=train, rngs={"dropout": key}))


def apply(name: str, batch, *, train: bool = False, seed: int = 0) -> ModelOutput:
  _, params = model_and_params(name)
  return forward(name, train)(params, batch, jax.random.PRNGKey(seed))


def logits_close(a: jax.Array, b: jax.Array) -> bool:
  return bool(np.allclose(a, b, atol=1e-5, rtol=1e-5))


@pytest.mark.parametrize("name", NAMES)
def test_forward_shapes_eval_and_train(name):
  batch = make_batch()
  eval_out = apply(name, batch)
  eval_again = apply(name, batch, seed=7)
  train_a = apply(name, batch, train=True, seed=2)
  train_b = apply(name, batch, train=True, seed=3)
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


def test_eval_needs_no_dropout_rng():
  batch = make_batch()
  for name in NAMES:
    model, params = model_and_params(name)
    out = jax.eval_shape(lambda p, b: model.apply({"params": p}, b), params, batch)
    chex.assert_shape(out.logits, (B, K))


@pytest.mark.parametrize("name", NAMES)
def test_jit_matches_eager(name):
  model, params = model_and_params(name)
  batch = make_batch(seed=4)
  fn = jax.jit(lambda p, b, key: model.apply({"params": p}, b, train=True,
                                             rngs={"dropout": key}).logits)
  key = jax.random.PRNGKey(5)
  eager = model.apply({"params": params}, batch, train=True, rngs={"dropout": key}).logits
  chex.assert_trees_all_close(fn(params, batch, key), eager, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_finite_and_reach_classifier(name):
  model, params = model_and_params(name)
  batch = make_batch(seed=6)
  labels = jnp.array([0, 3])

  def loss_fn(p):
    logits = model.apply({"params": p}, batch, train=True,
                         rngs={"dropout": jax.random.PRNGKey(8)}).logits
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  grads = jax.jit(jax.grad(loss_fn))(params)
  chex.assert_tree_all_finite(grads)
  chex.assert_trees_all_equal_shapes(grads, params)
  assert float(jnp.abs(grads["classifier"]["kernel"]).max()) > 0.0
  assert float(jnp.abs(grads["classifier"]["bias"]).max()) > 0.0
  # Gradient reaches (almost) every parameter, not just the head.
  leaves = jax.tree_util.tree_leaves_with_path(grads)
  nonzero = [p for p, g in leaves if float(jnp.abs(g).max()) > 0.0]
  assert len(nonzero) >= len(leaves) * 0.9, (name, len(nonzero), len(leaves))


def test_abmil_attention_sums_to_one_and_is_permutation_invariant():
  batch = make_batch(seed=9)
  out = apply("abmil", batch)
  chex.assert_shape(out.attn_tumour, (B, N))
  assert bool((out.attn_tumour >= 0).all())
  chex.assert_trees_all_close(out.attn_tumour.sum(-1), jnp.ones(B), atol=1e-6)
  perm = np.random.default_rng(0).permutation(N)
  permuted = apply("abmil", {**batch, "patches": batch["patches"][:, perm]})
  chex.assert_trees_all_close(permuted.logits, out.logits, atol=1e-5)
  chex.assert_trees_all_close(permuted.attn_tumour, out.attn_tumour[:, perm], atol=1e-6)
  # Histology only: the genes never enter.
  other_genes = make_batch(seed=10)
  regened = apply("abmil", {**batch, "genes_tumour": other_genes["genes_tumour"],
                            "genes_micro": other_genes["genes_micro"]})
  chex.assert_trees_all_equal(regened.logits, out.logits)


def test_abmil_pools_a_single_dominant_patch():
  # A bag of N copies of one patch pools to that patch's projection, whatever the weights.
  batch = make_batch(seed=11)
  single = {**batch, "patches": batch["patches"][:, :1]}
  copies = {**batch, "patches": jnp.repeat(batch["patches"][:, :1], N, axis=1)}
  one, many = apply("abmil", single), apply("abmil", copies)
  chex.assert_trees_all_close(many.attn_tumour, jnp.full((B, N), 1.0 / N), atol=1e-6)
  chex.assert_trees_all_close(many.logits, one.logits, atol=1e-5)


def test_snn_baseline_ignores_patches_and_reads_genes():
  batch = make_batch(seed=12)
  out = apply("snn", batch)
  other = make_batch(seed=13, n=5)
  chex.assert_trees_all_equal(apply("snn", {**batch, "patches": other["patches"]}).logits,
                              out.logits)
  no_patches = {"genes_tumour": batch["genes_tumour"], "genes_micro": batch["genes_micro"]}
  chex.assert_trees_all_equal(apply("snn", no_patches).logits, out.logits)
  for key in ("genes_tumour", "genes_micro"):
    assert not logits_close(apply("snn", {**batch, key: other[key]}).logits, out.logits), key


def test_concat_depends_on_both_modalities():
  batch = make_batch(seed=14)
  other = make_batch(seed=15)
  out = apply("concat", batch)
  chex.assert_shape(out.features, (B, 256 + 128))
  for key in ("patches", "genes_tumour", "genes_micro"):
    assert not logits_close(apply("concat", {**batch, key: other[key]}).logits, out.logits), key
  # The histology half of the features is a mean over patches: order does not matter.
  perm = np.random.default_rng(1).permutation(N)
  permuted = apply("concat", {**batch, "patches": batch["patches"][:, perm]})
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


@pytest.mark.parametrize("bilinear_gate", [False, True])
def test_pathomic_fusion_features(bilinear_gate):
  dp, dg = 8, 5
  model = build("pathomic", path_fusion_dim=dp, gene_fusion_dim=dg, bilinear_gate=bilinear_gate)
  batch = make_batch(seed=17)
  variables = jax.jit(model.init)({"params": jax.random.PRNGKey(2)}, batch)
  run = jax.jit(lambda v, b: model.apply(v, b, mutable=["intermediates"]))
  out, state = run(variables, batch)
  inter = state["intermediates"]
  (o_path,), (o_gene,), (fused,) = inter["gated_path"], inter["gated_gene"], inter["kronecker"]
  chex.assert_shape(o_path, (B, dp))
  chex.assert_shape(o_gene, (B, dg))
  chex.assert_shape(fused, (B, (dp + 1) * (dg + 1)))
  grid = fused.reshape(B, dp + 1, dg + 1)
  chex.assert_trees_all_close(grid[:, dp, :dg], o_gene)
  chex.assert_trees_all_close(grid[:, :dp, dg], o_path)
  chex.assert_shape(out.logits, (B, K))
  chex.assert_trees_all_close(out.attn_tumour.sum(-1), jnp.ones(B), atol=1e-6)
  # The gates see both modalities: the gated histology vector moves with the genes.
  other = make_batch(seed=18)
  _, state2 = run(variables, {**batch, "genes_micro": other["genes_micro"]})
  assert not np.allclose(state2["intermediates"]["gated_path"][0], o_path)


def test_mcat_coattention_weights_sum_to_one_per_token():
  batch = make_batch(seed=19)
  out = apply("mcat", batch)
  groups = default_group_sizes(GT, GM, 5)
  assert groups[0] == GT and sum(groups) == GT + GM and len(groups) == 6
  chex.assert_shape(out.attn_micro, (B, 1, len(groups), N))
  chex.assert_trees_all_close(out.attn_micro.sum(-1), jnp.ones((B, 1, len(groups))), atol=1e-6)
  chex.assert_shape(out.features, (B, 512))
  # Patches enter only through attention over the bag: permuting them permutes the weights.
  perm = np.random.default_rng(2).permutation(N)
  permuted = apply("mcat", {**batch, "patches": batch["patches"][:, perm]})
  chex.assert_trees_all_close(permuted.logits, out.logits, atol=1e-5)
  chex.assert_trees_all_close(permuted.attn_micro, out.attn_micro[..., perm], atol=1e-6)


def test_mcat_custom_groups_and_heads():
  model = build("mcat", group_sizes=(3, 4, 11), coattn_heads=2, embed_dim=32,
                gene_widths=(32, 32), ff_hidden=64, attention_hidden=16, fusion_hidden=16)
  batch = make_batch(seed=20)
  variables = jax.jit(model.init)({"params": jax.random.PRNGKey(3)}, batch)
  capture = jax.jit(lambda v, b: model.apply(v, b, capture_intermediates=True,
                                             mutable=["intermediates"]))
  out, s1 = capture(variables, batch)
  chex.assert_shape(out.attn_micro, (B, 2, 3, N))
  chex.assert_trees_all_close(out.attn_micro.sum(-1), jnp.ones((B, 2, 3)), atol=1e-6)
  assert variables["params"]["group_snn_1"]["dense_0"]["kernel"].shape == (4, 32)
  # Token 0 reads genes 0-2 only: changing gene 5 (group 1) leaves its SNN input untouched,
  # while the genomic tokens as a whole change.
  changed = {**batch, "genes_tumour": batch["genes_tumour"].at[:, 5].add(3.0)}
  _, s2 = capture(variables, changed)
  snn0 = lambda s: s["intermediates"]["group_snn_0"]["__call__"][0]
  snn1 = lambda s: s["intermediates"]["group_snn_1"]["__call__"][0]
  chex.assert_trees_all_equal(snn0(s1), snn0(s2))
  assert not np.allclose(snn1(s1), snn1(s2))
  with pytest.raises(ValueError, match="sum to 17"):
    jax.eval_shape(build("mcat", group_sizes=(3, 3, 11)).init, jax.random.PRNGKey(0), batch)


def test_build_baseline_errors():
  with pytest.raises(ValueError, match="valid names: .*'abmil'.*'mcat'"):
    build("transmil")
  with pytest.raises(ValueError, match="no attribute.*'hiden'"):
    build("abmil", hiden=3)
  model = build("concat")
  bad = {**make_batch(), "patches": jnp.ones((B, N, D + 1))}
  with pytest.raises(ValueError, match=r"batch\['patches'\].*last axis 32"):
    jax.eval_shape(model.init, jax.random.PRNGKey(0), bad)
  missing = {k: v for k, v in make_batch().items() if k != "genes_micro"}
  with pytest.raises(ValueError, match="no field 'genes_micro'"):
    jax.eval_shape(model.init, jax.random.PRNGKey(0), missing)
  assert not hasattr(build("abmil"), "n_genes_tumour")
  assert build("snn").n_genes_micro == GM
