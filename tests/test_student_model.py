"""The WSI-only student model: slides in, the subspace model's outputs out, genes never read."""

import jax
import jax.numpy as jnp
import numpy as np

from smml_jax.models.registry import build_model
from smml_jax.models.student import tissue_mean


def _key(seed: int) -> jax.Array:
  # RngBitGenerator keys: op by op, threefry keys make eager inits and draws compile ~2x longer on CPU.
  return jax.random.key(seed, impl="rbg")


OPTIONS = {"dim": 16, "snn_widths": [8, 16], "heads": 2, "dim_head": 8, "offset_groups": 2, "predictor_hidden": 12}


def _spec(name="subspace-student"):
  options = dict(OPTIONS)
  if name == "abmil":
    options = {}
  elif name != "subspace-student":
    options.pop("predictor_hidden")
  return build_model(name, num_classes=3, n_genes_tumour=5, n_genes_micro=7, feature_dim=6, options=options)


def _batch(rng, b=2):
  return {
    "patches": jnp.asarray(rng.normal(size=(b, 64, 6)), jnp.float32),
    "genes_tumour": jnp.asarray(rng.normal(size=(b, 5)), jnp.float32),
    "genes_micro": jnp.asarray(rng.normal(size=(b, 7)), jnp.float32),
  }


def test_student_outputs_match_the_subspace_model_and_need_no_genes():
  spec = _spec()
  assert not spec.needs_expression and spec.coordination and spec.consistency
  batch = _batch(np.random.default_rng(0))
  params = spec.module.init(_key(0), batch)["params"]
  out = spec.module.apply({"params": params}, {"patches": batch["patches"]})
  assert out.logits.shape == (2, 3) and out.gene_tumour.shape == (2, 16)
  assert out.gene_micro.shape == (2, 16) and out.embed_micro.shape == (2, 16)
  assert float(jnp.min(out.gene_tumour)) >= 0.0  # like the SNN's ReLU output
  other = dict(batch, genes_tumour=batch["genes_tumour"] + 5.0)
  np.testing.assert_array_equal(spec.module.apply({"params": params}, other).logits, out.logits)


def test_student_branches_and_heads_have_the_teachers_parameter_shapes():
  batch = _batch(np.random.default_rng(1))
  student = _spec().module.init(_key(0), batch)["params"]
  teacher = _spec("subspace").module.init(_key(0), batch)["params"]
  shared = ("branch_tumour", "branch_micro", "classifier", "classifier_tumour", "classifier_micro")
  for name in shared:
    shapes = lambda p: jax.tree.map(lambda x: x.shape, p[name])
    assert shapes(student) == shapes(teacher), name
  assert "snn_tumour" not in student and "gene_predictor_tumour" in student
  assert _spec("abmil").needs_expression is False and _spec("subspace").needs_expression


def test_tissue_mean_ignores_empty_cells():
  patches = np.zeros((1, 4, 3), np.float32)
  patches[0, 0] = [1.0, 2.0, 3.0]
  patches[0, 2] = [3.0, 2.0, 1.0]
  np.testing.assert_allclose(tissue_mean(jnp.asarray(patches)), [[2.0, 2.0, 2.0]])
  np.testing.assert_array_equal(tissue_mean(jnp.zeros((1, 4, 3))), 0.0)
