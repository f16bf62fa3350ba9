"""Gradient coordination (README §4) as an optax transformation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import load_fixture
from smml_jax.metrics.cindex import concordance_index
from smml_jax.losses.survival import risk_from_logits
from smml_jax.models.modalities import subspace_logits
from smml_jax.optim.coordination import ModalitySplit, coordinate_blocks, coordinate_gradients
from smml_jax.tasks import get_task


def classification_scores(kernel, bias, embeds, labels):
  """The diagnosis task's modality scores of the fused classifier's subspace logits."""
  scores, skip = get_task("diagnosis").modality_scores(subspace_logits(kernel, bias, embeds), {"diagnosis": labels})
  assert not skip
  return scores


def survival_scores(kernel, bias, embeds, time, event):
  """The survival task's (modality scores, skip) of the fused classifier's subspace logits."""
  return get_task("survival").modality_scores(
    subspace_logits(kernel, bias, embeds), {"surv_time": time, "event": event}
  )


HALVES = ModalitySplit.concat(sizes=(128, 128))


def _coordinate_torch_weight(grad_weight, scores, mode):
  """torch-layout (K, 256) gradient -> coordinated (K, 256), changed rows (K,)."""
  kernel_grad = jnp.asarray(grad_weight).T
  new, changed = coordinate_blocks(HALVES.split(kernel_grad), scores, mode=mode)
  return np.asarray(HALVES.merge(new, kernel_grad)).T, np.asarray(changed).any(axis=0)


@pytest.mark.parity
def test_parity_gradient_coordination_cases():
  fx = load_fixture("gradient_coordination.npz")
  assert int(fx["num_cases"]) >= 1
  for case in range(int(fx["num_cases"])):
    p = f"case{case}/"
    name = str(fx[p + "name"])
    kernel = fx[p + "classifier_weight"].T
    embeds = (fx[p + "feat_tumor"], fx[p + "feat_immune"])
    out_t, out_i = subspace_logits(kernel, fx[p + "classifier_bias"], embeds)
    np.testing.assert_allclose(out_t, fx[p + "out_t"], rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(out_i, fx[p + "out_i"], rtol=1e-5, atol=1e-6, err_msg=name)
    scores = classification_scores(kernel, fx[p + "classifier_bias"], embeds, fx[p + "label"])
    np.testing.assert_allclose(scores, [fx[p + "score_t"], fx[p + "score_i"]], rtol=1e-5, atol=1e-6)
    got, changed = _coordinate_torch_weight(fx[p + "grad_in"], scores, "reference")
    np.testing.assert_allclose(got, fx[p + "grad_out"], rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_array_equal(changed, fx[p + "rows_changed"], err_msg=name)


@pytest.mark.parity
def test_parity_coordination_deform_pathomic_net():
  fx = load_fixture("deform_pathomic_net.npz")
  kernel, bias = fx["param/classifier.weight"].T, fx["param/classifier.bias"]
  embeds = (fx["out/pathomic_vec_tumor"], fx["out/pathomic_vec_immune"])
  out_t, out_i = subspace_logits(kernel, bias, embeds)
  np.testing.assert_allclose(out_t, fx["coord/out_t"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out_i, fx["coord/out_i"], rtol=1e-5, atol=1e-6)
  scores = classification_scores(kernel, bias, embeds, fx["input/label_diag2021"])
  np.testing.assert_allclose(scores, [fx["coord/score_t"], fx["coord/score_i"]], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(scores[0] / scores[1], fx["coord/ratio_t"], rtol=1e-5)
  np.testing.assert_array_equal(fx["coord/classifier_weight_grad_before"], fx["grad/classifier.weight"])

  tx = coordinate_gradients({"classifier/kernel": HALVES}, mode="reference")
  grads = {
    "classifier": {
      "kernel": jnp.asarray(fx["grad/classifier.weight"].T),
      "bias": jnp.asarray(fx["grad/classifier.bias"]),
    }
  }
  new, state = jax.jit(tx.update)(grads, tx.init(grads), None, modality_scores=scores)
  np.testing.assert_allclose(
    new["classifier"]["kernel"].T, fx["coord/classifier_weight_grad_after"], rtol=1e-5, atol=1e-6
  )
  np.testing.assert_array_equal(new["classifier"]["bias"], grads["classifier"]["bias"])
  changed_rows = np.flatnonzero(np.asarray(state.changed["classifier/kernel"]).any(axis=0))
  np.testing.assert_array_equal(changed_rows, np.flatnonzero(fx["coord/row_cosine"] < 0))


def _random_rows(rng, rows=64, dim=5):
  return rng.normal(size=(2, rows, dim)).astype(np.float32)


def test_reference_mode_is_the_scaled_reflection():
  blocks = _random_rows(np.random.default_rng(0))
  u, v = blocks.astype(np.float64)
  new, changed = coordinate_blocks(blocks, jnp.array([0.3, 0.9]), mode="reference")
  cos = (u * v).sum(1) / np.linalg.norm(u, axis=1) / np.linalg.norm(v, axis=1)
  p = ((u * v).sum(1) / (v * v).sum(1))[:, None] * v
  reflected = np.sqrt(1 - cos**2)[:, None] * (u - 2 * p)
  expected = np.where((cos < 0)[:, None], reflected, u)
  np.testing.assert_allclose(new[0], expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(new[1], blocks[1])
  np.testing.assert_array_equal(changed[0], cos < 0)
  # The reference leaves the rewritten block AGREEING with v rather than orthogonal to it.
  assert np.all((np.asarray(new[0]) * v).sum(1)[cos < 0] > 0)


def test_hand_case_two_dimensions():
  blocks = jnp.array([[[-1.0, 1.0]], [[1.0, 0.0]]])  # u at 135 degrees to v
  weak_first = jnp.array([0.5, 1.0])
  ref, _ = coordinate_blocks(blocks, weak_first, mode="reference")
  np.testing.assert_allclose(ref[0, 0], np.array([1.0, 1.0]) / np.sqrt(2), rtol=1e-6)
  pcg, _ = coordinate_blocks(blocks, weak_first, mode="pcgrad")
  np.testing.assert_allclose(pcg[0, 0], [0.0, np.sqrt(2)], rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(pcg[1], blocks[1])
  # Micro weaker: its block is projected off the tumour block instead.
  pcg, changed = coordinate_blocks(blocks, weak_first[::-1], mode="pcgrad")
  np.testing.assert_array_equal(pcg[0], blocks[0])
  np.testing.assert_allclose(pcg[1, 0], np.array([1.0, 1.0]) / np.sqrt(2) * 1.0, rtol=1e-6)
  np.testing.assert_array_equal(changed, [[False], [True]])


def test_pcgrad_two_modalities_properties():
  blocks = _random_rows(np.random.default_rng(1))
  new, changed = jax.jit(coordinate_blocks)(blocks, jnp.array([0.9, 0.2]))
  strong, weak = blocks.astype(np.float64)
  conflict = (strong * weak).sum(1) < 0
  np.testing.assert_array_equal(changed[1], conflict)
  np.testing.assert_array_equal(changed[0], False)
  np.testing.assert_array_equal(new[0], blocks[0])
  new_weak = np.asarray(new[1], np.float64)
  np.testing.assert_allclose((new_weak * strong).sum(1)[conflict], 0.0, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(new_weak, axis=1), np.linalg.norm(weak, axis=1), rtol=1e-5)
  np.testing.assert_array_equal(new_weak[~conflict], blocks[1][~conflict])
  assert conflict.any() and (~conflict).any()


def test_unchanged_on_no_conflict_ties_nan_scores_and_skip():
  rng = np.random.default_rng(2)
  blocks = _random_rows(rng)
  aligned = np.stack([np.abs(blocks[0]), np.abs(blocks[1])])
  for mode in ("pcgrad", "reference"):
    new, changed = coordinate_blocks(aligned, jnp.array([0.1, 0.9]), mode=mode)
    np.testing.assert_array_equal(new, aligned)
    assert not np.asarray(changed).any()
    for scores, skip in (([0.5, 0.5], False), ([np.nan, 0.4], False), ([0.1, 0.9], True)):
      new, changed = coordinate_blocks(blocks, jnp.array(scores), mode=mode, skip=skip)
      np.testing.assert_array_equal(new, blocks, err_msg=f"{mode} {scores} {skip}")
      assert not np.asarray(changed).any()
  zero = blocks.copy()
  zero[0, :3] = 0.0  # zero halves: cosine NaN in the reference, no conflict in pcgrad
  for mode in ("pcgrad", "reference"):
    new, _ = coordinate_blocks(zero, jnp.array([0.1, 0.9]), mode=mode)
    np.testing.assert_array_equal(new[:, :3], zero[:, :3])
    assert np.all(np.isfinite(new))


def _numpy_pcgrad(blocks, scores):
  blocks = blocks.astype(np.float64)
  out = blocks.copy()
  order = np.argsort(scores, kind="stable")
  for rank, m in enumerate(order):
    for r in range(blocks.shape[1]):
      g = blocks[m, r].copy()
      for k in order[rank + 1 :]:
        other = blocks[k, r]
        if scores[k] > scores[m] and g @ other < 0:
          g = g - (g @ other) / (other @ other) * other
      out[m, r] = g / np.linalg.norm(g) * np.linalg.norm(blocks[m, r])
  return out


def test_pcgrad_three_modalities():
  rng = np.random.default_rng(3)
  blocks = rng.normal(size=(3, 200, 4)).astype(np.float32)
  scores = np.array([0.6, 0.1, 0.8], np.float32)  # weakest 1, then 0, strongest 2
  new, changed = coordinate_blocks(blocks, jnp.asarray(scores))
  np.testing.assert_allclose(new, _numpy_pcgrad(blocks, scores), rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(new[2], blocks[2])
  new64 = np.asarray(new, np.float64)
  # Every edited block ends with no conflict against the strongest one and keeps its norm.
  for m in (0, 1):
    assert np.all((new64[m] * blocks[2]).sum(1) > -1e-5)
    np.testing.assert_allclose(np.linalg.norm(new64[m], axis=1), np.linalg.norm(blocks[m], axis=1), rtol=1e-5)
  assert np.asarray(changed[1]).sum() > np.asarray(changed[0]).sum() > 0


def test_concat_split_roundtrip_unequal_sizes():
  kernel = jnp.arange(7 * 3, dtype=jnp.float32).reshape(7, 3)
  split = ModalitySplit.concat(sizes=(4, 3))
  blocks = split.split(kernel)
  assert blocks.shape == (2, 3, 4)
  np.testing.assert_array_equal(blocks[1, :, :3], kernel[4:].T)
  np.testing.assert_array_equal(blocks[1, :, 3], 0.0)
  np.testing.assert_array_equal(split.merge(blocks, kernel), kernel)
  with pytest.raises(ValueError, match="expected a 2-D leaf"):
    split.split(jnp.ones((6, 3)))


def test_chain_with_adam_under_jit():
  rng = np.random.default_rng(4)
  params = {
    "classifier": {"kernel": jnp.asarray(rng.normal(size=(256, 4)), jnp.float32), "bias": jnp.zeros(4)},
    "encoder": {"kernel": jnp.asarray(rng.normal(size=(3, 3)), jnp.float32)},
  }
  grads = jax.tree_util.tree_map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
  coord = coordinate_gradients({"classifier/kernel": HALVES})
  tx = optax.chain(coord, optax.adam(1e-2))
  state = tx.init(params)
  scores = jnp.array([0.2, 0.7])
  step = jax.jit(lambda g, s, p, sc: tx.update(g, s, p, modality_scores=sc))
  updates, state = step(grads, state, params, scores)
  coordinated, _ = coord.update(grads, coord.init(params), params, modality_scores=scores)
  adam = optax.adam(1e-2)
  expected, _ = adam.update(coordinated, adam.init(params), params)
  for got, want in zip(jax.tree_util.tree_leaves(updates), jax.tree_util.tree_leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
  assert not np.allclose(coordinated["classifier"]["kernel"], grads["classifier"]["kernel"])
  np.testing.assert_array_equal(coordinated["encoder"]["kernel"], grads["encoder"]["kernel"])
  # A second step reuses the compiled function with the new state.
  step(grads, state, params, scores)


def test_transform_errors():
  tx = coordinate_gradients({"head/kernel": HALVES})
  with pytest.raises(ValueError, match="no parameter at paths"):
    tx.init({"classifier": {"kernel": jnp.ones((256, 4))}})
  ok = coordinate_gradients(lambda path: HALVES if path.endswith("classifier/kernel") else None)
  params = {"classifier": {"kernel": jnp.ones((256, 4))}}
  with pytest.raises(ValueError, match="modality_scores"):
    ok.update(params, ok.init(params), params)
  with pytest.raises(ValueError, match="M = 2"):
    coordinate_blocks(jnp.ones((3, 2, 2)), jnp.ones(3), mode="reference")


def test_survival_scores_are_subspace_cindices_and_skip_when_censored():
  rng = np.random.default_rng(5)
  b, e, k = 12, 6, 4
  kernel = rng.normal(size=(2 * e, k)).astype(np.float32)
  bias = rng.normal(size=(k,)).astype(np.float32)
  embeds = (rng.normal(size=(b, e)).astype(np.float32), rng.normal(size=(b, e)).astype(np.float32))
  time = rng.integers(0, 4, b).astype(np.float32)
  event = rng.random(b) < 0.5
  scores, skip = jax.jit(survival_scores)(kernel, bias, embeds, time, event)
  assert not skip
  for m, out in enumerate(subspace_logits(kernel, bias, embeds)):
    np.testing.assert_allclose(scores[m], concordance_index(risk_from_logits(out), time, event))
  _, skip = survival_scores(kernel, bias, embeds, time, np.zeros(b, bool))
  assert skip
  tx = coordinate_gradients({"k": ModalitySplit.concat(sizes=(e, e))})
  grads = {"k": jnp.asarray(rng.normal(size=(2 * e, k)), jnp.float32)}
  nan_scores, skip = survival_scores(kernel, bias, embeds, time, np.zeros(b, bool))
  new, _ = tx.update(grads, tx.init(grads), modality_scores=nan_scores, skip=skip)
  np.testing.assert_array_equal(new["k"], grads["k"])
