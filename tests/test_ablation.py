"""Ablations of the deformable attention (evaluate/ablation.py) on a small subspace model."""

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from flax import traverse_util

from smml_jax.evaluate import ablation
from smml_jax.tasks import get_task
from smml_jax.evaluate.interpret import lattice_grid
from smml_jax.models.branch import BranchConfig
from smml_jax.models.deform_attention import DeformAttentionConfig
from smml_jax.models.subspace_net import SubspaceConfig, SubspaceNet

SIDE, DIM, FEAT, GROUPS = 8, 32, 24, 4


@pytest.fixture(scope="module")
def model_and_params():
  attention = DeformAttentionConfig(heads=4, dim_head=8, offset_groups=GROUPS, cpb_hidden=8, dropout=0.0)
  model = SubspaceNet(
    SubspaceConfig(num_classes=3, branch=BranchConfig(dim=DIM, attention=attention), snn_widths=(16, 12, 8, DIM))
  )
  rng = np.random.default_rng(0)
  batch = {
    "patches": jnp.asarray(rng.normal(size=(3, SIDE * SIDE, FEAT)), jnp.float32),
    "genes_tumour": jnp.asarray(rng.normal(size=(3, 5)), jnp.float32),
    "genes_micro": jnp.asarray(rng.normal(size=(3, 9)), jnp.float32),
  }
  params = jax.jit(model.init)(jax.random.PRNGKey(0), batch)["params"]  # one compile, not per op
  apply = jax.jit(lambda p, b: model.apply({"params": p}, b))
  return apply, params, batch


def test_ablated_params_zero_only_the_named_leaves(model_and_params):
  _, params, _ = model_and_params
  before = traverse_util.flatten_dict(jax.tree_util.tree_map(np.array, params))
  edited = traverse_util.flatten_dict(ablation.ablated_params(params, "micro", "attention_off"))
  changed = {k for k in before if not np.array_equal(before[k], edited[k])}
  assert changed == {("branch_micro", "attention", "to_out", "kernel"), ("branch_micro", "attention", "to_out", "bias")}
  assert all(not np.any(edited[k]) for k in changed)
  after = traverse_util.flatten_dict(params)  # the input is not modified
  assert all(np.array_equal(before[k], after[k]) for k in before)


def test_offsets_zero_samples_the_undeformed_lattice(model_and_params):
  apply, params, batch = model_and_params
  trained = apply(params, batch)
  side = trained.grid_micro.shape[-1]
  lattice = lattice_grid(trained.grid_micro.shape[0], side)
  assert not np.allclose(trained.grid_micro, lattice)
  out = apply(ablation.ablated_params(params, "micro", "offsets_zero"), batch)
  np.testing.assert_array_equal(out.grid_micro, lattice)
  np.testing.assert_array_equal(out.grid_tumour, trained.grid_tumour)
  assert not np.allclose(out.logits, trained.logits)


def test_attention_off_makes_the_logits_blind_to_that_branch_points(model_and_params):
  apply, params, batch = model_and_params

  def moved_offsets(p):  # a different offset network: the points move elsewhere
    flat = dict(traverse_util.flatten_dict(p))
    key = ("branch_micro", "attention", "offset_conv_kernel")
    flat[key] = 3.0 * np.asarray(flat[key])[::-1]
    return traverse_util.unflatten_dict(flat)

  on = apply(params, batch).logits
  assert not np.allclose(apply(moved_offsets(params), batch).logits, on)
  off = ablation.ablated_params(params, "micro", "attention_off")
  np.testing.assert_array_equal(apply(moved_offsets(off), batch).logits, apply(off, batch).logits)
  assert not np.allclose(apply(off, batch).logits, on)


def test_bad_requests_are_named(model_and_params):
  _, params, _ = model_and_params
  assert ablation.supports(params)
  with pytest.raises(ValueError, match="branch must be one of"):
    ablation.ablated_params(params, "stroma", "offsets_zero")
  with pytest.raises(ValueError, match="ablation must be one of"):
    ablation.ablated_params(params, "micro", "dropout")
  baseline = {"classifier": {"kernel": np.zeros((4, 3))}}
  assert not ablation.supports(baseline)
  with pytest.raises(ValueError, match="branch_micro/attention/offset_proj/kernel"):
    ablation.ablated_params(baseline, "micro", "offsets_zero")


def test_offset_statistics_separate_a_fixed_shift_from_content():
  n, side, grid_side = 50, 4, 16
  cell = grid_side / (side - 1)
  lattice = lattice_grid(n * GROUPS, side).reshape(n, GROUPS, 2, side, side)
  zero = ablation.offset_statistics(lattice, grid_side)
  assert zero["mean_abs_offset"] == 0 and zero["between_slide_std"] == 0
  assert np.isnan(zero["content_fraction"])
  fixed = ablation.offset_statistics(lattice + 0.5, grid_side)
  assert fixed["mean_abs_offset"] == pytest.approx(0.5 * cell)
  assert fixed["between_slide_std"] == pytest.approx(0.0, abs=1e-12)
  assert fixed["content_fraction"] == pytest.approx(0.0, abs=1e-12)
  noise = np.random.default_rng(0).normal(0.0, 0.3, lattice.shape)
  varied = ablation.offset_statistics(lattice + noise, grid_side)
  assert varied["between_slide_std"] == pytest.approx(0.3 * cell, rel=0.1)
  assert varied["content_fraction"] == pytest.approx(1.0, rel=0.1)
  with pytest.raises(ValueError, match=r"\(n, G, 2, S, S\)"):
    ablation.offset_statistics(lattice[:, 0], grid_side)


def test_headline_metric():
  table = pd.DataFrame(
    {
      "label": [0, 1, 2, 1],
      "prob_0": [0.8, 0.1, 0.1, 0.2],
      "prob_1": [0.1, 0.8, 0.1, 0.7],
      "prob_2": [0.1, 0.1, 0.8, 0.1],
    }
  )
  assert get_task("grading").headline(table) == ("auc", 1.0)
  flipped = table.assign(prob_0=table["prob_2"], prob_2=table["prob_0"])
  assert get_task("grading").headline(flipped)[1] < 1.0
  surv = pd.DataFrame({"risk": [3.0, 2.0, 1.0], "time": [10.0, 20.0, 30.0], "event": [1, 1, 0]})
  assert get_task("survival").headline(surv) == ("c_index", 1.0)
  name, value = get_task("survival").headline(surv.drop(columns="time"))
  assert name == "c_index" and np.isnan(value)
