"""The full subspace model vs the original DeformPathomicNet (deform_pathomic_net.npz)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_within_tol, load_fixture, max_rel_err

from smml_jax import convert
from smml_jax.models.subspace_net import SubspaceConfig, SubspaceNet

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
