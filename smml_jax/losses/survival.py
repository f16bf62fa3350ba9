"""Discrete-time survival: the NLL on sigmoid hazards (README §6) and curve/risk helpers.

Convention: `event` is 1 where death was observed and 0 where the patient was censored
(the data pipeline's `event` field). The original's loss takes the censorship
c = 1 - event instead.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

SURVIVAL_EPS = 1e-7


def hazards_from_logits(logits: jax.Array) -> jax.Array:
  """(B, K) pre-sigmoid logits -> (B, K) per-bin hazards h = sigmoid(logits)."""
  return jax.nn.sigmoid(jnp.asarray(logits, jnp.float32))


def survival_curve(hazards: jax.Array) -> jax.Array:
  """(B, K) hazards -> (B, K) survival S_k = prod_{m <= k} (1 - h_m) (after bin k)."""
  return jnp.cumprod(1.0 - hazards, axis=-1)


def risk_from_hazards(hazards: jax.Array) -> jax.Array:
  """(B, K) hazards -> (B,) risk = -sum_k S_k; higher risk = shorter expected survival."""
  return -jnp.sum(survival_curve(hazards), axis=-1)


def risk_from_logits(logits: jax.Array) -> jax.Array:
  """(B, K) pre-sigmoid logits -> (B,) risk score (see `risk_from_hazards`)."""
  return risk_from_hazards(hazards_from_logits(logits))


def _clamp_min(x: jax.Array, eps: float) -> jax.Array:
  # torch.clamp(min=eps): the gradient passes where x >= eps and is 0 where clamped.
  return jnp.where(x >= eps, x, eps)


def survival_nll(
  logits: jax.Array,
  bins: jax.Array,
  event: jax.Array,
  mask: Optional[jax.Array] = None,
  alpha: float = 0.0,
  eps: float = SURVIVAL_EPS,
) -> jax.Array:
  """The original's NLLSurvLoss on h = sigmoid(logits), S = cumprod(1 - h).

  With S_pad = [1, S_1, ..., S_K] and c = 1 - event:
    uncensored_b = -(1 - c_b) [log max(S_pad[b, Y_b], eps) + log max(h[b, Y_b], eps)]
    censored_b   = -c_b log max(S_pad[b, Y_b + 1], eps)
    loss = mean_b [(1 - alpha)(censored_b + uncensored_b) + alpha uncensored_b]
  A clamped entry has zero gradient (torch.clamp semantics). Gradients flow through both
  h and S. The original trains with alpha = 0 (its class default is 0.15).

  Args:
    logits: (B, K) pre-sigmoid hazards.
    bins: (B,) int time-bin index in [0, K); negative (-1 = missing) is ignored.
    event: (B,) int/bool, 1 = death observed, 0 = censored.
    mask: (B,) bool, False for batch padding (ignored).
    alpha: weight of the extra uncensored term.
    eps: clamp floor before each log.

  Returns:
    () float32 mean over valid examples; 0 when none is valid.
  """
  hazards = hazards_from_logits(logits)
  surv = survival_curve(hazards)
  s_pad = jnp.concatenate([jnp.ones_like(surv[:, :1]), surv], axis=1)
  bins = jnp.asarray(bins)
  valid = bins >= 0
  if mask is not None:
    valid = valid & jnp.asarray(mask, bool)
  y = jnp.where(valid, bins, 0)[:, None]
  censored = 1.0 - jnp.asarray(event, jnp.float32)
  s_before = jnp.take_along_axis(s_pad, y, axis=1)[:, 0]
  s_after = jnp.take_along_axis(s_pad, y + 1, axis=1)[:, 0]
  h_at = jnp.take_along_axis(hazards, y, axis=1)[:, 0]
  uncensored = -(1.0 - censored) * (jnp.log(_clamp_min(s_before, eps)) + jnp.log(_clamp_min(h_at, eps)))
  censored_term = -censored * jnp.log(_clamp_min(s_after, eps))
  per_example = (1.0 - alpha) * (censored_term + uncensored) + alpha * uncensored
  per_example = jnp.where(valid, per_example, 0.0)
  count = jnp.sum(valid.astype(jnp.float32))
  return jnp.sum(per_example) / jnp.maximum(count, 1.0)
