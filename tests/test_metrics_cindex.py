"""Batch Harrell C-index in JAX against scikit-survival."""

import jax
import numpy as np
from sksurv.metrics import concordance_index_censored

from smml_jax.metrics.cindex import concordance, concordance_index


def _sksurv_or_nan(risk, time, event):
  try:
    with np.errstate(invalid="ignore"):  # sksurv divides 0 / 0 when no pair is comparable
      return concordance_index_censored(event.astype(bool), time, risk)[0]
  except ValueError:  # all censored / no comparable pair
    return np.nan


def test_equals_sksurv_with_tied_times_and_risks():
  rng = np.random.default_rng(0)
  fn = jax.jit(concordance_index)
  checked = 0
  for size in (2, 3, 5, 8, 16):
    for _ in range(25):
      time = rng.integers(0, 5, size).astype(np.float32)  # many tied times
      event = rng.random(size) < 0.5
      risk = np.round(rng.normal(size=size), 1).astype(np.float32)  # tied risks
      expected = _sksurv_or_nan(risk.astype(np.float64), time.astype(np.float64), event)
      np.testing.assert_allclose(
        fn(risk, time, event), expected, rtol=1e-6, err_msg=f"time={time} event={event} risk={risk}"
      )
      checked += np.isfinite(expected)
  assert checked > 50


def test_all_censored_and_no_comparable_pairs_give_nan():
  risk, time = np.array([0.1, 0.5, -0.2]), np.array([3.0, 1.0, 2.0])
  result = concordance(risk, time, np.zeros(3, bool))
  assert np.isnan(result.cindex) and result.comparable == 0
  only_last_event = concordance(risk, time, np.array([True, False, False]))  # the longest time
  assert np.isnan(only_last_event.cindex) and only_last_event.comparable == 0


def test_mask_equals_the_subset():
  rng = np.random.default_rng(1)
  risk, time = rng.normal(size=10), rng.integers(0, 4, 10).astype(float)
  event = rng.random(10) < 0.6
  mask = rng.random(10) < 0.7
  got = concordance(risk, time, event, mask)
  want = concordance(risk[mask], time[mask], event[mask])
  np.testing.assert_allclose(
    [got.cindex, got.concordant, got.comparable], [want.cindex, want.concordant, want.comparable], rtol=1e-6
  )
