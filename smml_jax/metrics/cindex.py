"""Harrell's concordance index of one batch in JAX (jit-able, O(B^2) pairs)."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

TIED_TOL = 1e-8


class Concordance(NamedTuple):
  """Pair counts of a batch.

  Attributes:
    cindex: () float32 concordant / comparable with tied risks counted 1/2; NaN when the
      batch has no comparable pair (e.g. every example censored).
    concordant: () float32 number of concordant pairs + 0.5 * tied-risk pairs.
    comparable: () float32 number of comparable pairs.
  """

  cindex: jax.Array
  concordant: jax.Array
  comparable: jax.Array


def concordance(
  risk: jax.Array, time: jax.Array, event: jax.Array, mask: Optional[jax.Array] = None, tied_tol: float = TIED_TOL
) -> Concordance:
  """Harrell's C exactly as scikit-survival's `concordance_index_censored`.

  A pair (i, j) is comparable when i had an event and either time_j > time_i, or
  time_j == time_i and j is censored (tied event times are not comparable). It is
  concordant when risk_i > risk_j; |risk_i - risk_j| <= tied_tol counts 1/2.

  Args:
    risk: (B,) float, higher = shorter survival.
    time: (B,) float survival or follow-up time (any unit, or the bin index).
    event: (B,) bool/int, 1 = death observed.
    mask: (B,) bool, False for padding (those examples are in no pair).
    tied_tol: risk tie tolerance (sksurv's default 1e-8).

  Returns:
    `Concordance`; `cindex` is NaN when `comparable == 0` (sksurv raises instead). Callers
    that coordinate on it must skip that batch (see `tasks.Survival.modality_scores`).
  """
  risk = jnp.asarray(risk, jnp.float32)
  time = jnp.asarray(time)
  event = jnp.asarray(event).astype(bool)
  valid = jnp.ones(risk.shape, bool) if mask is None else jnp.asarray(mask, bool)
  t_i, t_j = time[:, None], time[None, :]
  later = (t_j > t_i) | ((t_j == t_i) & ~event[None, :])
  comparable = (event & valid)[:, None] & valid[None, :] & later
  diff = risk[:, None] - risk[None, :]
  tied = jnp.abs(diff) <= tied_tol
  score = jnp.where(tied, 0.5, (diff > 0).astype(jnp.float32))
  num = jnp.sum(jnp.where(comparable, score, 0.0))
  den = jnp.sum(comparable.astype(jnp.float32))
  cindex = jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), jnp.nan)
  return Concordance(cindex, num, den)


def concordance_index(
  risk: jax.Array, time: jax.Array, event: jax.Array, mask: Optional[jax.Array] = None, tied_tol: float = TIED_TOL
) -> jax.Array:
  """() float32 Harrell's C (NaN when no pair is comparable); see `concordance`."""
  return concordance(risk, time, event, mask, tied_tol).cindex
