"""The full subspace model vs the original DeformPathomicNet (deform_pathomic_net.npz)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_within_tol, load_fixture, max_rel_err

from smml_jax import convert
from smml_jax.models.subspace_net import SubspaceConfig, SubspaceNet

pytestmark = pytest.mark.slow  # the full-size model's outputs and gradients

FIXTURE = "deform_pathomic_net.npz"


@pytest.fixture(scope="module")
def ref():
  return load_fixture(FIXTURE)


@pytest.fixture(scope="module")
def ported(ref):
  num_classes = ref["param/classifier.bias"].shape[0]
  config = SubspaceConfig(num_classes=num_classes)
  model = SubspaceNet(config)
  batch = {"patches": jnp.asarray(ref["input/x_path"]),
           "genes_tumour": jnp.asarray(ref["input/x_omic_tumor"]),
           "genes_micro": jnp.asarray(ref["input/x_omic_immune"])}
  template = jax.eval_shape(model.init, jax.random.PRNGKey(0), batch)["params"]
  params = convert.convert_subspace_net(convert.load_state_dict(ref, "param/"), config, template)
  return model, params, batch


OUTPUTS = {  # ModelOutput field -> fixture key, tolerance key
    "logits": ("out/logits2_hazard", "hazard"),
    "logits_tumour": ("out/logits0_hazard_tumor", "hazard"),
    "logits_micro": ("out/logits1_hazard_immune", "hazard"),
    "features": ("out/features", "features"),
    "embed_tumour": ("out/pathomic_vec_tumor", "features"),
    "embed_micro": ("out/pathomic_vec_immune", "features"),
    "grid_tumour": ("out/logits4_vgrid_tumor", "features"),
    "grid_micro": ("out/logits6_vgrid_immune", "features"),
}


@pytest.mark.parity
def test_parity_model_outputs(ref, ported):
  model, params, batch = ported
  out, state = jax.jit(lambda p: model.apply({"params": p}, batch, mutable="intermediates"))(params)
  for field, (key, tol) in OUTPUTS.items():
    got = getattr(out, field)
    assert max_rel_err(got, ref[key]) <= 1e-4, field
    assert_within_tol(got, ref[key], float(ref[f"tol/f32_vs_f64_maxabs_{tol}"]), field)
  # The token-repeated gene embeddings (omic_rep) are the SNN outputs on every token.
  for field, key in (("gene_tumour", "out/logits3_omic_tumor"),
                     ("gene_micro", "out/logits5_omic_immune")):
    assert max_rel_err(getattr(out, field), ref[key][:, 0]) <= 1e-4, field
    np.testing.assert_array_equal(ref[key], np.broadcast_to(ref[key][:, :1], ref[key].shape))
  inter = state["intermediates"]["branch_tumour"]
  n_tok = ref["inter/tumor/fc1_out_tok0_15"].shape[1]
  for name, key in (("path", "fc1_out"), ("fused", "fusion_out"), ("layer_out", "layer_out")):
    assert max_rel_err(inter[name][0][:, :n_tok], ref[f"inter/tumor/{key}_tok0_{n_tok - 1}"]) <= 1e-4
  assert max_rel_err(inter["pooled"][0], ref["inter/tumor/pooled"]) <= 1e-4
  assert max_rel_err(out.gene_tumour, ref["inter/tumor/omic_vec"]) <= 1e-4


@pytest.mark.parity
def test_parity_model_loss_and_gradients(ref, ported):
  """CE + 0.5 * sum BL_tumour + 0.5 * sum BL_micro and its gradient w.r.t. every parameter."""
  from smml_jax.losses.classification import weighted_cross_entropy
  from smml_jax.losses.consistency import batch_consistency_loss

  model, params, batch = ported
  labels = jnp.asarray(ref["input/label_diag2021"])
  weights = jnp.asarray(ref["loss/class_weights_diag2021_train"])

  def total(p):
    out = model.apply({"params": p}, batch)
    ce = weighted_cross_entropy(out.logits, labels, weights)
    bl_t = batch_consistency_loss(out.gene_tumour, out.grid_tumour).sum()
    bl_m = batch_consistency_loss(out.gene_micro, out.grid_micro).sum()
    return ce + 0.5 * bl_t + 0.5 * bl_m, (ce, bl_t, bl_m)

  (loss, (ce, bl_t, bl_m)), grads = jax.jit(jax.value_and_grad(total, has_aux=True))(params)
  for got, key in ((ce, "loss/ce_diag2021"), (bl_t, "loss/batch_sim_tumor"),
                   (bl_m, "loss/batch_sim_immune"), (loss, "loss/total")):
    np.testing.assert_allclose(got, ref[key], atol=1.5e-5, err_msg=key)

  flat = __import__("flax").traverse_util.flatten_dict(grads, sep="/")
  rules = {r.torch_name: r for r in convert.subspace_net_rules(model.config)[0]}
  without_grad = set(str(s) for s in ref["meta/params_without_grad"])
  checked = 0
  for key in ref:
    if not key.startswith("grad/"):
      continue
    name = key[len("grad/"):]
    rule = rules[name]
    got = flat[rule.flax_path]
    want = rule.transform(ref[key], tuple(got.shape))
    if name.endswith("rel_pos_bias.mlp.2.bias"):  # mathematically zero: README 1.1
      assert float(np.max(np.abs(got))) <= 1e-6, name
    else:
      assert_within_tol(got, want, float(ref[f"tol/f32_vs_f64_maxabs_grad/{name}"]), key)
    checked += 1
  assert checked == len(rules) - 4  # every rule but the four logged-only subspace-head tensors
  # Parameters the original never trains get exactly zero gradient here.
  for name in without_grad & set(rules):
    np.testing.assert_array_equal(flat[rules[name].flax_path], 0.0)
