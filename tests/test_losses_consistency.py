"""Gene-guided consistency loss (BatchLoss, README §3)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_fixture
from smml_jax.losses.classification import weighted_cross_entropy
from smml_jax.losses.consistency import batch_consistency_loss


def _numpy_batch_loss(omic, vgrid, per_sample):
  """Direct float64 transcription of README §3 (loops over items)."""
  n = omic.shape[0]
  o = omic.reshape(n, -1).astype(np.float64)
  g = vgrid.shape[0] // n
  flat = vgrid.reshape(n * g, -1).astype(np.float64)
  if per_sample:
    items = [flat.reshape(n, g, -1)[:, a] for a in range(g)]
  else:
    items = [flat.reshape(g, n, -1)[a] for a in range(g)]
  norm = lambda s: s / np.linalg.norm(s, axis=1, keepdims=True)
  s_hat = norm(o @ o.T)
  m = np.mean([norm(v @ v.T) for v in items], axis=0)
  return (s_hat - m) ** 2 / n


@pytest.mark.parity
def test_parity_batch_loss_values_and_gradients():
  fx = load_fixture("batch_loss.npz")
  assert int(fx["num_cases"]) >= 1
  loss_sum = jax.jit(lambda o, v: jnp.sum(batch_consistency_loss(o, v)))
  grad_fn = jax.jit(jax.grad(lambda o, v: jnp.sum(batch_consistency_loss(o, v)), argnums=(0, 1)))
  for case in range(int(fx["num_cases"])):
    p = f"case{case}/"
    omic, vgrid = fx[p + "omic"], fx[p + "vgrid"]
    assert omic.shape[0] == int(fx[p + "N"])
    matrix = batch_consistency_loss(omic, vgrid)
    np.testing.assert_allclose(matrix, fx[p + "loss_matrix"], rtol=1e-4, atol=1e-8, err_msg=p)
    np.testing.assert_allclose(loss_sum(omic, vgrid), fx[p + "loss_sum"], rtol=1e-4, atol=1e-8)
    g_omic, g_vgrid = grad_fn(omic, vgrid)
    np.testing.assert_allclose(g_omic, fx[p + "grad_omic"], rtol=1e-3, atol=1e-9, err_msg=p)
    np.testing.assert_allclose(g_vgrid, fx[p + "grad_vgrid"], rtol=1e-3, atol=1e-9, err_msg=p)
    # The token-repeated (N, k, H) input and its (N, H) vector give the same loss.
    np.testing.assert_allclose(batch_consistency_loss(omic[:, 0], vgrid), matrix, rtol=1e-4, atol=1e-8)


@pytest.mark.parity
def test_parity_batch_sim_deform_pathomic_net():
  fx = load_fixture("deform_pathomic_net.npz")
  sums = {}
  for name, omic_key, grid_key in (
    ("tumor", "out/logits3_omic_tumor", "out/logits4_vgrid_tumor"),
    ("immune", "out/logits5_omic_immune", "out/logits6_vgrid_immune"),
  ):
    matrix = batch_consistency_loss(fx[omic_key], fx[grid_key])
    np.testing.assert_allclose(matrix, fx[f"loss/batch_sim_{name}_matrix"], rtol=0, atol=1.5e-5)
    sums[name] = jnp.sum(matrix)
    np.testing.assert_allclose(sums[name], fx[f"loss/batch_sim_{name}"], rtol=0, atol=1.5e-5)
  batch_sim = 0.5 * sums["tumor"] + 0.5 * sums["immune"]
  np.testing.assert_allclose(batch_sim, fx["loss/batch_sim"], rtol=0, atol=1.5e-5)
  ce = weighted_cross_entropy(
    fx["out/logits2_hazard"], fx["input/label_diag2021"], fx["loss/class_weights_diag2021_train"]
  )
  np.testing.assert_allclose(ce + batch_sim, fx["loss/total"], rtol=0, atol=1.5e-5)


@pytest.mark.parametrize("mode", ["reference", "per_sample"])
def test_modes_match_the_written_definition(mode):
  rng = np.random.default_rng(0)
  omic = rng.uniform(size=(4, 6)).astype(np.float32)
  vgrid = rng.uniform(0, 3, size=(4 * 3, 2, 2, 2)).astype(np.float32)
  got = batch_consistency_loss(omic, vgrid, mode=mode)
  np.testing.assert_allclose(got, _numpy_batch_loss(omic, vgrid, mode == "per_sample"), rtol=1e-4, atol=1e-8)


def test_per_sample_is_permutation_equivariant_reference_is_not():
  rng = np.random.default_rng(1)
  n, g = 4, 8
  omic = rng.uniform(size=(n, 16)).astype(np.float32)
  vgrid = rng.uniform(0, 11, size=(n * g, 2, 3, 3)).astype(np.float32)
  perm = np.array([2, 0, 3, 1])
  vgrid_perm = vgrid.reshape(n, g, -1)[perm].reshape(vgrid.shape)
  fixed = batch_consistency_loss(omic, vgrid, mode="per_sample")
  fixed_perm = batch_consistency_loss(omic[perm], vgrid_perm, mode="per_sample")
  np.testing.assert_allclose(fixed_perm, np.asarray(fixed)[perm][:, perm], rtol=1e-5, atol=1e-9)
  ref = batch_consistency_loss(omic, vgrid)
  ref_perm = batch_consistency_loss(omic[perm], vgrid_perm)
  assert not np.allclose(ref_perm, np.asarray(ref)[perm][:, perm], rtol=1e-3, atol=1e-9)


@pytest.mark.parametrize("mode", ["reference", "per_sample"])
def test_mask_equals_the_loss_of_the_real_examples(mode):
  rng = np.random.default_rng(2)
  n, g = 5, 4
  omic = rng.uniform(size=(n, 8)).astype(np.float32)
  vgrid = rng.uniform(0, 5, size=(n * g, 2, 2, 2)).astype(np.float32)
  mask = np.array([True, False, True, True, False])
  real = np.flatnonzero(mask)
  sub = batch_consistency_loss(omic[real], vgrid.reshape(n, g, -1)[real].reshape(-1, 2, 2, 2), mode=mode)
  loss = jax.jit(lambda o, v, m: batch_consistency_loss(o, v, mode=mode, mask=m))
  got = np.asarray(loss(omic, vgrid, mask))
  np.testing.assert_allclose(got[np.ix_(real, real)], sub, rtol=1e-5, atol=1e-9)
  assert np.all(got[~mask] == 0) and np.all(got[:, ~mask] == 0)
  g_omic, g_vgrid = jax.grad(lambda o, v: jnp.sum(loss(o, v, mask)), argnums=(0, 1))(omic, vgrid)
  assert np.all(np.isfinite(g_omic)) and np.all(np.isfinite(g_vgrid))
  np.testing.assert_array_equal(g_omic[~mask], 0.0)
  np.testing.assert_array_equal(np.asarray(g_vgrid).reshape(n, g, -1)[~mask], 0.0)
  np.testing.assert_allclose(
    loss(omic, vgrid, np.ones(n, bool)), batch_consistency_loss(omic, vgrid, mode=mode), rtol=1e-5, atol=1e-9
  )


def test_zero_gene_embedding_nan_unless_guarded():
  omic = np.array([[1.0, 2.0], [0.0, 0.0]], np.float32)
  vgrid = np.random.default_rng(3).uniform(size=(16, 2, 2, 2)).astype(np.float32)
  assert np.isnan(batch_consistency_loss(omic, vgrid)).any()
  guarded = lambda o: jnp.sum(batch_consistency_loss(o, vgrid, eps=1e-6))
  assert np.isfinite(guarded(omic)) and np.all(np.isfinite(jax.grad(guarded)(omic)))


def test_single_example_is_zero_and_bad_shapes_raise():
  # Exactly 0 in exact arithmetic; XLA's x * rsqrt(y) leaves ~1e-16.
  np.testing.assert_allclose(batch_consistency_loss(np.ones((1, 3)), np.ones((8, 2, 2, 2))), 0.0, atol=1e-12)
  with pytest.raises(ValueError, match="multiple of the batch size"):
    batch_consistency_loss(np.ones((3, 4)), np.ones((8, 2, 2, 2)))
  with pytest.raises(ValueError, match="mode"):
    batch_consistency_loss(np.ones((2, 4)), np.ones((8, 2, 2, 2)), mode="fixed")
