"""Integrated gradients, sampling-point geometry, attention mass and region concentration."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smml_jax.evaluate import interpret
from smml_jax.losses.survival import risk_from_logits
from smml_jax.tasks import get_task


def _key(seed: int) -> jax.Array:
  # RngBitGenerator keys: op by op, threefry keys make eager inits and draws compile ~2x longer on CPU.
  return jax.random.key(seed, impl="rbg")


def _nonlinear_model(key):
  """A small two-input nonlinear classifier: logits (B, 3) from genes_tumour (B, 5), genes_micro (B, 7)."""
  k1, k2, k3 = jax.random.split(key, 3)
  w_t = jax.random.normal(k1, (5, 4))
  w_m = jax.random.normal(k2, (7, 4))
  w_out = jax.random.normal(k3, (4, 3))

  def fn(inputs):
    h = jnp.tanh(inputs["genes_tumour"] @ w_t) * jax.nn.softplus(inputs["genes_micro"] @ w_m)
    return jnp.sin(h) @ w_out + 0.1 * (h**2) @ w_out

  return fn


@pytest.mark.parametrize("probability", [False, True])
def test_integrated_gradients_completeness(probability):
  key = _key(0)
  fn = _nonlinear_model(key)
  kx, kb = jax.random.split(_key(1))
  inputs = {"genes_tumour": jax.random.normal(kx, (4, 5)), "genes_micro": jax.random.normal(kb, (4, 7))}
  baselines = {"genes_tumour": jnp.full((5,), 0.3), "genes_micro": jnp.full((7,), -0.2)}  # a "mean"
  target_fn = interpret.class_target(fn(inputs).argmax(-1), probability=probability)
  attr = interpret.integrated_gradients(fn, inputs, baselines, target_fn, steps=64)
  assert attr["genes_tumour"].shape == (4, 5) and attr["genes_micro"].shape == (4, 7)
  total = attr["genes_tumour"].sum(-1) + attr["genes_micro"].sum(-1)
  base = {k: jnp.broadcast_to(v, inputs[k].shape) for k, v in baselines.items()}
  gap = target_fn(fn(inputs)) - target_fn(fn(base))
  assert float(jnp.max(jnp.abs(gap))) > 1e-2  # the check is not vacuous
  np.testing.assert_allclose(np.asarray(total), np.asarray(gap), rtol=1e-2, atol=1e-3)
  # Coarse integration is visibly worse: the test would catch a wrong quadrature.
  coarse = interpret.integrated_gradients(fn, inputs, baselines, target_fn, steps=2)
  coarse_err = jnp.abs(coarse["genes_tumour"].sum(-1) + coarse["genes_micro"].sum(-1) - gap).max()
  assert float(jnp.abs(total - gap).max()) < float(coarse_err)


def test_integrated_gradients_jit_and_alpha_batches_agree():
  fn = _nonlinear_model(_key(2))
  inputs = {"genes_tumour": jax.random.normal(_key(3), (3, 5)), "genes_micro": jax.random.normal(_key(4), (3, 7))}
  target_fn = interpret.class_target(jnp.array([0, 1, 2]))
  full = interpret.integrated_gradients(fn, inputs, None, target_fn, steps=16)
  ig = jax.jit(
    functools.partial(
      interpret.integrated_gradients, fn, baselines=None, target_fn=target_fn, steps=16, alpha_batch_size=5
    )
  )
  chunked = ig(inputs)
  for k in inputs:
    np.testing.assert_allclose(np.asarray(chunked[k]), np.asarray(full[k]), rtol=1e-5, atol=1e-6)


def test_integrated_gradients_ranks_planted_gene_first():
  planted = 11
  names = [f"GENE{i}" for i in range(20)]

  def fn(inputs):  # survival-style hazard logits that depend on one micro gene only
    x = inputs["genes_micro"][:, planted]
    return jnp.stack([jnp.tanh(2 * x), x**2 - 1.0, 0.5 * x, jnp.zeros_like(x)], axis=-1)

  rng = np.random.default_rng(0)
  inputs = {
    "genes_tumour": jnp.asarray(rng.normal(size=(8, 6)), jnp.float32),
    "genes_micro": jnp.asarray(rng.normal(size=(8, 20)), jnp.float32),
  }
  attr = interpret.integrated_gradients(fn, inputs, None, risk_from_logits, steps=32)
  table = interpret.top_genes(attr["genes_micro"], names)
  assert table.iloc[0]["gene"] == f"GENE{planted}"
  assert list(table["rank"]) == list(range(1, 21))
  assert table.iloc[0]["mean_abs_attribution"] > 0
  np.testing.assert_array_equal(np.asarray(attr["genes_tumour"]), 0.0)
  assert float(table.iloc[1:]["mean_abs_attribution"].max()) == 0.0
  assert len(interpret.top_genes(attr["genes_micro"], names, k=5)) == 5


def test_integrated_gradients_rejects_bad_target():
  fn = lambda x: x["genes_micro"]  # noqa: E731
  with pytest.raises(ValueError, match="target_fn must return"):
    interpret.integrated_gradients(fn, {"genes_micro": jnp.ones((2, 3))}, None, lambda l: l, steps=4)
  with pytest.raises(ValueError, match="baselines lack"):
    interpret.integrated_gradients(fn, {"genes_micro": jnp.ones((2, 3))}, {}, lambda l: l[:, 0])


def test_top_genes_rejects_name_mismatch():
  with pytest.raises(ValueError, match="3 gene names for 4"):
    interpret.top_genes(np.ones((2, 4)), ["a", "b", "c"])


def test_grid_points_to_pixels_hand_computation():
  n, s, groups, batch = 50, 12, 2, 3
  oy, ox = np.meshgrid(np.arange(s), np.arange(s), indexing="ij")
  grid = np.zeros((batch * groups, 2, s, s), np.float32)
  for row in range(batch * groups):
    grid[row, 0] = ox + 0.01 * row  # x / column, tagged by row b*G+g
    grid[row, 1] = oy
  px = np.asarray(interpret.grid_points_to_pixels(grid, n, s, groups))
  assert px.shape == (batch, groups, s * s, 2)
  np.testing.assert_allclose(px[0, 0, 0], [-0.5, -0.5], atol=1e-6)  # grid 0 -> px -0.5
  np.testing.assert_allclose(px[0, 0, s * s - 1], [n - 0.5, n - 0.5], atol=1e-5)  # grid S-1 -> n-0.5
  # Point j = S*oy + ox: (row, col) from channels (1, 0); row b*G+g lands at [b, g].
  b, g, j = 2, 1, 5 * s + 7
  expected_col = (7 + 0.01 * (b * groups + g)) * n / (s - 1) - 0.5
  np.testing.assert_allclose(px[b, g, j], [5 * n / (s - 1) - 0.5, expected_col], rtol=1e-6)
  with pytest.raises(ValueError, match="multiple of groups"):
    interpret.grid_points_to_pixels(grid[:5], n, s, groups)
  with pytest.raises(ValueError, match="expected a"):
    interpret.grid_points_to_pixels(grid[:, :1], n, s, groups)


def test_bilinear_splat_weights_and_zero_padding():
  n = 4
  points = jnp.array([[[1.25, 2.5], [-0.5, -0.5], [10.0, 1.0]]])  # (B=1, P=3, 2)
  out = np.asarray(interpret.bilinear_splat(points, jnp.array([[2.0, 1.0, 5.0]]), n)).reshape(n, n)
  expected = np.zeros((n, n))
  expected[1, 2] = expected[1, 3] = 2.0 * 0.75 * 0.5
  expected[2, 2] = expected[2, 3] = 2.0 * 0.25 * 0.5
  expected[0, 0] = 0.25  # the corner point keeps only its one inside corner
  np.testing.assert_allclose(out, expected, atol=1e-6)  # the far-away point contributes nothing


def test_attention_mass_and_patch_mass():
  rng = np.random.default_rng(0)
  batch, groups, nq, s, n = 2, 3, 10, 4, 8
  logits = rng.normal(size=(batch, groups, nq, s * s))
  attn = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  mass = np.asarray(interpret.attention_mass(attn))
  assert mass.shape == (batch, groups, s * s)
  np.testing.assert_allclose(mass.sum(-1), nq, rtol=1e-5)  # every query distributes mass 1
  # Points at pixel centres well inside the grid: all mass lands on patches.
  points = rng.integers(0, n, size=(batch, groups, s * s, 2)).astype(np.float32)
  pm = np.asarray(interpret.patch_mass(points, mass, n))
  assert pm.shape == (batch, n, n)
  np.testing.assert_allclose(pm.sum((1, 2)), groups * nq, rtol=1e-5)
  b, g, j = 1, 2, 3
  r, c = points[b, g, j].astype(int)
  hits = (points[b, ..., 0] == r) & (points[b, ..., 1] == c)
  np.testing.assert_allclose(pm[b, r, c], mass[b][hits].sum(), rtol=1e-5)


def test_region_concentration_uniform_is_chance():
  n = 10
  rows, cols = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
  centres = np.stack([rows.ravel(), cols.ravel()], -1).astype(np.float32)
  points = np.broadcast_to(centres, (2, 2, n * n, 2))  # every patch sampled once per group
  mask = np.zeros((2, n, n), bool)
  mask[0, :3, :] = True
  mask[1, 4:9, 2:8] = True
  assert interpret.region_concentration(points, mask, n) == pytest.approx(1.0, abs=1e-6)
  # Many uniformly random points inside the grid: close to chance as well.
  rng = np.random.default_rng(1)
  random_points = rng.uniform(0, n - 1, size=(2, 4, 4000, 2))
  assert interpret.region_concentration(random_points, mask.reshape(2, -1), n) == pytest.approx(1.0, abs=0.08)


def test_region_concentration_above_chance_inside_region():
  n = 10
  mask = np.zeros((1, n, n), bool)
  mask[0, 2:5, 2:5] = True  # 9% of the grid
  rng = np.random.default_rng(2)
  inside = rng.integers(2, 5, size=(1, 2, 30, 2)).astype(np.float32)
  ratio = interpret.region_concentration(inside, mask, n)
  assert ratio == pytest.approx(1.0 / mask.mean(), rel=1e-6)
  half = np.concatenate([inside, rng.integers(6, 10, size=(1, 2, 30, 2)).astype(np.float32)], axis=2)
  assert interpret.region_concentration(half, mask, n) == pytest.approx(0.5 / mask.mean(), rel=1e-6)
  with pytest.raises(ValueError, match="region_mask must be"):
    interpret.region_concentration(inside, mask[:, :5], n)


@pytest.mark.parametrize("survival", [False, True])
def test_model_gene_attributions_on_a_flax_model(survival):
  import flax.linen as nn

  from smml_jax.models.outputs import ModelOutput

  planted = 3

  class PlantedModel(nn.Module):
    """Logits from the patches (held fixed) and one planted microenvironment gene."""

    @nn.compact
    def __call__(self, batch, train: bool = False):
      del train
      pooled = nn.Dense(4)(batch["patches"].mean(axis=1))
      gene = batch["genes_micro"][:, planted : planted + 1]
      return ModelOutput(logits=pooled + nn.Dense(4)(jnp.tanh(3.0 * gene)))

  rng = np.random.default_rng(3)
  batch = {
    "patches": jnp.asarray(rng.normal(size=(5, 6, 8)), jnp.float32),
    "genes_tumour": jnp.asarray(rng.normal(size=(5, 4)), jnp.float32),
    "genes_micro": jnp.asarray(rng.normal(size=(5, 9)), jnp.float32),
  }
  model = PlantedModel()
  variables = model.init(_key(0), batch)
  task = get_task("survival" if survival else "diagnosis")
  attr = interpret.model_gene_attributions(model.apply, variables, batch, task=task, steps=16)
  assert attr["genes_tumour"].shape == (5, 4) and attr["genes_micro"].shape == (5, 9)
  table = interpret.top_genes(attr["genes_micro"], [f"M{i}" for i in range(9)])
  assert table.iloc[0]["gene"] == f"M{planted}" and table.iloc[0]["mean_abs_attribution"] > 0
  np.testing.assert_array_equal(np.asarray(attr["genes_tumour"]), 0.0)
  with pytest.raises(ValueError, match="batch lacks"):
    interpret.model_gene_attributions(model.apply, variables, {"patches": batch["patches"]}, task)


def test_lattice_grid_is_the_attention_grid_without_offsets():
  """With the offset projection zeroed, the module's grid is exactly `lattice_grid`."""
  from smml_jax.models.deform_attention import DeformAttentionConfig, DeformCrossAttention

  cfg = DeformAttentionConfig(heads=2, dim_head=4, offset_groups=2, cpb_hidden=4, dropout=0.0)
  module = DeformCrossAttention(cfg)
  x = jax.random.normal(_key(0), (3, 8 * 8, 8))
  params = module.init(_key(1), x, x)["params"]
  _, moved, _ = module.apply({"params": params}, x, x)
  params = jax.tree_util.tree_map(jnp.asarray, params)  # a copy to edit
  params["offset_proj"]["kernel"] = jnp.zeros_like(params["offset_proj"]["kernel"])
  _, grid, _ = module.apply({"params": params}, x, x)
  side = grid.shape[-1]
  lattice = interpret.lattice_grid(grid.shape[0], side)
  assert lattice.shape == grid.shape == (3 * 2, 2, side, side)
  np.testing.assert_allclose(np.asarray(grid), lattice, atol=1e-6)
  assert np.abs(np.asarray(moved) - lattice).max() > 1e-3  # the initial offsets do move points


def test_mass_concentration_against_area():
  n = 6
  mask = np.zeros((2, n * n), bool)
  mask[0, :9] = True  # area 1/4
  mask[1, :18] = True  # area 1/2
  uniform = np.full((2, n * n), 3.0)
  assert interpret.mass_concentration(uniform, mask) == pytest.approx(1.0)
  inside = uniform * mask  # all mass in the region of each slide
  # (3*9 + 3*18) / (27 * 1/4 + 54 * 1/2) = 81 / 33.75
  assert interpret.mass_concentration(inside, mask) == pytest.approx(81 / 33.75)
  assert interpret.mass_concentration(inside, ~mask) == 0.0
  with pytest.raises(ValueError, match="does not match"):
    interpret.mass_concentration(uniform, mask[:, :10])
  with pytest.raises(ValueError, match="undefined"):
    interpret.mass_concentration(np.zeros_like(uniform), mask)
