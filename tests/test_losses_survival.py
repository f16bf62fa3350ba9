"""Discrete-time survival NLL (README §6) and survival-curve helpers."""

import jax
import numpy as np
import pytest

from conftest import load_fixture
from smml_jax.losses.survival import (
  hazards_from_logits,
  risk_from_hazards,
  risk_from_logits,
  survival_curve,
  survival_nll,
)


@pytest.mark.parity
def test_parity_survival_nll_value_and_gradient():
  fx = load_fixture("survival_nll.npz")
  assert int(fx["num_cases"]) >= 1
  for case in range(int(fx["num_cases"])):
    p = f"case{case}/"
    np.testing.assert_allclose(
      hazards_from_logits(fx[p + "logits"]), fx[p + "hazards"], rtol=1e-5, atol=1e-6, err_msg=str(fx[p + "name"])
    )
    np.testing.assert_allclose(survival_curve(fx[p + "hazards"]), fx[p + "S"], rtol=1e-5, atol=1e-6)
    event = 1 - fx[p + "c"]  # the fixture stores censorship
    loss = lambda z: survival_nll(z, fx[p + "Y"], event, alpha=float(fx[p + "alpha"]), eps=float(fx["eps"]))
    value, grad = jax.jit(jax.value_and_grad(loss))(fx[p + "logits"])
    np.testing.assert_allclose(value, fx[p + "loss"], rtol=1e-5, atol=1e-6, err_msg=str(fx[p + "name"]))
    np.testing.assert_allclose(grad, fx[p + "grad_logits"], rtol=1e-5, atol=1e-6, err_msg=str(fx[p + "name"]))


def test_mask_and_missing_bins_equal_the_subset():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(7, 4)).astype(np.float32)
  bins = np.array([0, 3, 2, -1, 1, 2, 0])
  event = np.array([1, 0, 1, 1, 0, 0, 1])
  mask = np.array([True, True, True, True, False, True, True])
  keep = mask & (bins >= 0)
  expected = survival_nll(logits[keep], bins[keep], event[keep], alpha=0.15)
  got, grad = jax.value_and_grad(survival_nll)(logits, bins, event, mask, 0.15)
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  np.testing.assert_array_equal(grad[~keep], 0.0)


def test_curve_and_risk_ordering():
  rng = np.random.default_rng(1)
  h = hazards_from_logits(rng.normal(size=(5, 4)))
  s = survival_curve(h)
  assert np.all(np.diff(np.asarray(s), axis=1) <= 0) and np.all((s > 0) & (s < 1))
  higher = np.clip(np.asarray(h) + 0.05, 0, 1)
  assert np.all(risk_from_hazards(higher) > risk_from_hazards(h))
  np.testing.assert_allclose(risk_from_logits(np.zeros((2, 4))), -np.cumprod(np.full(4, 0.5)).sum())
