"""Knowledge distillation from a trained teacher: temperature-scaled logit KD, feature matching.

The teacher's outputs are targets: no gradient flows into them. Every loss is a masked mean over
the batch's real (unpadded) rows and is 0, not NaN, for a batch of padding only.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp


def _check(student: jax.Array, teacher: jax.Array, what: str) -> None:
  if student.shape != teacher.shape or student.ndim != 2:
    raise ValueError(f"{what}: student shape {student.shape} and teacher shape {teacher.shape} must be the same (B, K)")


def _check_temperature(temperature: float) -> None:
  if not temperature > 0:
    raise ValueError(f"distillation temperature must be > 0, got {temperature}")


def _masked_mean(per_row: jax.Array, mask: Optional[jax.Array]) -> jax.Array:
  """(B,) -> () mean over the rows where mask is True (0 when none is)."""
  if mask is None:
    return jnp.mean(per_row)
  m = jnp.asarray(mask, jnp.float32)
  return jnp.sum(per_row * m) / jnp.maximum(jnp.sum(m), 1.0)


def softmax_kd(
  student_logits: jax.Array, teacher_logits: jax.Array, *, temperature: float, mask: Optional[jax.Array] = None
) -> jax.Array:
  """T^2 * KL(softmax(teacher / T) || softmax(student / T)), mean over real rows.

  Args:
    student_logits, teacher_logits: (B, K) class logits.
    temperature: T > 0; T^2 keeps the gradient's scale independent of T (Hinton et al., 2015).
    mask: (B,) True for real examples.

  Returns:
    () float32.
  """
  _check(student_logits, teacher_logits, "softmax_kd")
  _check_temperature(temperature)
  t = jax.lax.stop_gradient(jnp.asarray(teacher_logits, jnp.float32)) / temperature
  s = jnp.asarray(student_logits, jnp.float32) / temperature
  log_p, log_q = jax.nn.log_softmax(t, axis=-1), jax.nn.log_softmax(s, axis=-1)
  kl = jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)
  return temperature**2 * _masked_mean(kl, mask)


def sigmoid_kd(
  student_logits: jax.Array, teacher_logits: jax.Array, *, temperature: float, mask: Optional[jax.Array] = None
) -> jax.Array:
  """T^2 * sum_k KL(Bernoulli(sigmoid(t_k / T)) || Bernoulli(sigmoid(s_k / T))), mean over rows.

  For discrete-time survival, whose K outputs are independent per-bin hazard logits.

  Args:
    student_logits, teacher_logits: (B, K) hazard logits.
    temperature: T > 0.
    mask: (B,) True for real examples.

  Returns:
    () float32.
  """
  _check(student_logits, teacher_logits, "sigmoid_kd")
  _check_temperature(temperature)
  t = jax.lax.stop_gradient(jnp.asarray(teacher_logits, jnp.float32)) / temperature
  s = jnp.asarray(student_logits, jnp.float32) / temperature
  p = jax.nn.sigmoid(t)
  kl = p * (jax.nn.log_sigmoid(t) - jax.nn.log_sigmoid(s)) + (1.0 - p) * (
    jax.nn.log_sigmoid(-t) - jax.nn.log_sigmoid(-s)
  )
  return temperature**2 * _masked_mean(jnp.sum(kl, axis=-1), mask)


def feature_matching(student: jax.Array, teacher: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
  """Mean squared error between (B, E) student and teacher features, mean over real rows."""
  _check(student, teacher, "feature_matching")
  diff = jnp.asarray(student, jnp.float32) - jax.lax.stop_gradient(jnp.asarray(teacher, jnp.float32))
  return _masked_mean(jnp.mean(diff * diff, axis=-1), mask)
