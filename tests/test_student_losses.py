"""Distillation losses: logit KD (softmax and per-bin sigmoid) and feature matching."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smml_jax.losses.distillation import feature_matching, sigmoid_kd, softmax_kd


def _softmax_kl(p_logits, q_logits, t):
  p = np.exp(p_logits / t) / np.exp(p_logits / t).sum(-1, keepdims=True)
  q = np.exp(q_logits / t) / np.exp(q_logits / t).sum(-1, keepdims=True)
  return (p * (np.log(p) - np.log(q))).sum(-1)


def test_softmax_kd_is_t_squared_kl_teacher_to_student_over_real_rows():
  rng = np.random.default_rng(0)
  s, t = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
  mask = np.array([True, True, True, False])
  got = softmax_kd(jnp.asarray(s), jnp.asarray(t), temperature=2.0, mask=jnp.asarray(mask))
  want = 4.0 * _softmax_kl(t, s, 2.0)[:3].mean()
  np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_kd_is_zero_when_student_equals_teacher_and_has_no_gradient_to_teacher():
  logits = jnp.asarray(np.random.default_rng(1).normal(size=(5, 4)), jnp.float32)
  assert float(softmax_kd(logits, logits, temperature=3.0)) == pytest.approx(0.0, abs=1e-6)
  assert float(sigmoid_kd(logits, logits, temperature=3.0)) == pytest.approx(0.0, abs=1e-6)
  grad_t = jax.grad(lambda t: softmax_kd(logits * 0.5, t, temperature=2.0))(logits)
  np.testing.assert_array_equal(np.asarray(grad_t), 0.0)


def test_sigmoid_kd_is_per_bin_bernoulli_kl():
  rng = np.random.default_rng(2)
  s, t = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
  temp = 2.0
  p, q = 1 / (1 + np.exp(-t / temp)), 1 / (1 + np.exp(-s / temp))
  kl = p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))
  got = sigmoid_kd(jnp.asarray(s), jnp.asarray(t), temperature=temp)
  np.testing.assert_allclose(float(got), temp**2 * kl.sum(-1).mean(), rtol=1e-5)


def test_feature_matching_is_masked_mean_squared_error():
  rng = np.random.default_rng(3)
  s, t = rng.normal(size=(4, 6)), rng.normal(size=(4, 6))
  mask = np.array([True, False, True, True])
  got = feature_matching(jnp.asarray(s), jnp.asarray(t), mask=jnp.asarray(mask))
  np.testing.assert_allclose(float(got), ((s - t) ** 2).mean(-1)[mask].mean(), rtol=1e-5)
  grad_t = jax.grad(lambda x: feature_matching(jnp.asarray(s), x))(jnp.asarray(t))
  np.testing.assert_array_equal(np.asarray(grad_t), 0.0)


def test_all_padding_gives_zero_not_nan():
  x = jnp.ones((2, 3))
  mask = jnp.zeros((2,), bool)
  assert float(softmax_kd(x, 2 * x, temperature=2.0, mask=mask)) == 0.0
  assert float(feature_matching(x, 2 * x, mask=mask)) == 0.0


def test_bad_shapes_and_temperature_are_refused():
  with pytest.raises(ValueError, match="shape"):
    softmax_kd(jnp.ones((2, 3)), jnp.ones((2, 4)), temperature=2.0)
  with pytest.raises(ValueError, match="temperature"):
    softmax_kd(jnp.ones((2, 3)), jnp.ones((2, 3)), temperature=0.0)
  with pytest.raises(ValueError, match="shape"):
    feature_matching(jnp.ones((2, 3)), jnp.ones((3, 3)))
