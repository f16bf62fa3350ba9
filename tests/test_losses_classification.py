"""Weighted cross-entropy (PyTorch semantics) and class weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_fixture
from smml_jax.losses.classification import ORIGINAL_CLASS_WEIGHTS, class_weights_from_labels, weighted_cross_entropy


def _torch_weighted_mean_numpy(logits, labels, weights):
  logits = logits.astype(np.float64)
  logp = logits - logits.max(1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
  nll = -logp[np.arange(len(labels)), labels]
  w = weights[labels]
  return (w * nll).sum() / w.sum()


def test_matches_pytorch_weighted_mean_formula():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(7, 4)).astype(np.float32) * 3
  labels = rng.integers(0, 4, 7)
  weights = np.asarray(ORIGINAL_CLASS_WEIGHTS["diagnosis"], np.float32)
  got = jax.jit(weighted_cross_entropy)(logits, labels, weights)
  np.testing.assert_allclose(got, _torch_weighted_mean_numpy(logits, labels, weights), rtol=1e-6)
  unweighted = weighted_cross_entropy(logits, labels)
  np.testing.assert_allclose(unweighted, _torch_weighted_mean_numpy(logits, labels, np.ones(4)), rtol=1e-6)


@pytest.mark.parity
def test_parity_ce_deform_pathomic_net():
  fx = load_fixture("deform_pathomic_net.npz")
  np.testing.assert_array_equal(
    fx["loss/class_weights_diag2021_train"], np.asarray(ORIGINAL_CLASS_WEIGHTS["diagnosis"], np.float32)
  )
  got = weighted_cross_entropy(
    fx["out/logits2_hazard"], fx["input/label_diag2021"], fx["loss/class_weights_diag2021_train"]
  )
  np.testing.assert_allclose(got, fx["loss/ce_diag2021"], rtol=0, atol=1.5e-5)


def test_mask_and_missing_labels_equal_the_subset():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(6, 3)).astype(np.float32)
  labels = np.array([0, 2, 1, -1, 2, 0])
  mask = np.array([True, True, False, True, True, True])
  w = np.array([1.47, 1.51, 1.0], np.float32)
  keep = mask & (labels >= 0)
  expected = weighted_cross_entropy(logits[keep], labels[keep], w)
  got = weighted_cross_entropy(logits, labels, w, mask=mask)
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  grad = jax.grad(lambda x: weighted_cross_entropy(x, labels, w, mask=mask))(logits)
  np.testing.assert_array_equal(grad[~keep], 0.0)


def test_all_padding_gives_zero_and_finite_gradient():
  logits = jnp.ones((3, 4))
  value, grad = jax.value_and_grad(weighted_cross_entropy)(logits, jnp.zeros(3, int), None, jnp.zeros(3, bool))
  assert value == 0.0
  assert np.all(np.isfinite(grad)) and np.all(grad == 0)


def test_class_weights_inverse_frequency_most_frequent_is_one():
  labels = np.array([0] * 6 + [1] * 2 + [2] * 3 + [-1] * 4)
  counts = np.array([6, 2, 3])
  w = class_weights_from_labels(labels, 3)
  assert w.dtype == np.float32
  np.testing.assert_allclose(w, counts.max() / counts)
  assert w[np.argmax(counts)] == 1.0


def test_class_weights_bad_input():
  with pytest.raises(ValueError, match="no training example"):
    class_weights_from_labels(np.array([0, 0, 2]), 3)
  with pytest.raises(ValueError, match="out of range"):
    class_weights_from_labels(np.array([0, 1, 3]), 3)
