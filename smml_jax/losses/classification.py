"""Class-weighted cross-entropy as PyTorch computes it, and the original's class weights."""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

# The original's fixed training-loop class weights, by task (README §2.5). Its *test*
# function used other diagnosis weights, (1.0, 4.56, 3.21, 2.65), and unweighted CE for
# grading and subtype; those are not reproduced here.
ORIGINAL_CLASS_WEIGHTS: Mapping[str, tuple[float, ...]] = {
  "diagnosis": (1.0, 4.15, 2.93, 2.43),
  "grading": (1.47, 1.51, 1.0),
  "subtype": (1.0, 1.72, 2.43),
}


def weighted_cross_entropy(
  logits: jax.Array,
  labels: jax.Array,
  class_weights: Optional[jax.Array | Sequence[float]] = None,
  mask: Optional[jax.Array] = None,
) -> jax.Array:
  """PyTorch's `F.cross_entropy(logits, labels, weight=w)` (reduction 'mean'), with a mask.

  loss = sum_b w[y_b] * m_b * nll_b / sum_b w[y_b] * m_b, nll_b = -log softmax(logits_b)[y_b].

  Args:
    logits: (B, K) float.
    labels: (B,) int class indices; negative labels (-1 = missing) are ignored like
      PyTorch's `ignore_index`.
    class_weights: (K,) float or None (all ones: the plain mean over valid examples).
    mask: (B,) bool/float, True for real examples and False for batch padding.

  Returns:
    () float32 loss. 0 when no example is valid (PyTorch would give NaN), so a fully
    padded batch contributes nothing and has zero gradient.
  """
  logits = jnp.asarray(logits, jnp.float32)
  labels = jnp.asarray(labels)
  valid = labels >= 0
  if mask is not None:
    valid = valid & jnp.asarray(mask, bool)
  safe_labels = jnp.where(valid, labels, 0)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(log_probs, safe_labels[:, None], axis=-1)[:, 0]
  if class_weights is None:
    weights = jnp.ones_like(nll)
  else:
    weights = jnp.asarray(class_weights, jnp.float32)[safe_labels]
  weights = jnp.where(valid, weights, 0.0)
  denom = jnp.sum(weights)
  return jnp.sum(weights * nll) / jnp.where(denom > 0, denom, 1.0)


def class_weights_from_labels(train_labels: np.ndarray, num_classes: int) -> np.ndarray:
  """Inverse-frequency class weights fitted on the TRAINING labels only.

  w_k = max_j n_j / n_k, so the most frequent class has weight 1 and a class with a third
  of its count has weight 3. This matches the form of the original's fixed weights
  (`ORIGINAL_CLASS_WEIGHTS`, e.g. diagnosis (1.0, 4.15, 2.93, 2.43): GBM is the largest
  class). Labels < 0 (missing) are ignored.

  Args:
    train_labels: (P,) int labels of the training split.
    num_classes: K.

  Returns:
    (K,) float32 weights.

  Raises:
    ValueError: a label >= num_classes, or a class absent from the training labels (its
      inverse frequency is undefined; check the split).
  """
  labels = np.asarray(train_labels).astype(np.int64).ravel()
  labels = labels[labels >= 0]
  if labels.size and labels.max() >= num_classes:
    raise ValueError(
      f"class_weights_from_labels: label {labels.max()} is out of range for "
      f"num_classes={num_classes} (expected 0..{num_classes - 1})"
    )
  counts = np.bincount(labels, minlength=num_classes)
  absent = np.flatnonzero(counts == 0)
  if absent.size:
    raise ValueError(
      f"class_weights_from_labels: classes {absent.tolist()} have no training "
      f"example (counts {counts.tolist()}); expected every class 0.."
      f"{num_classes - 1} in the training split"
    )
  return (counts.max() / counts).astype(np.float32)
