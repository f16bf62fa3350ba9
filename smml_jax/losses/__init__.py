"""Training losses: weighted cross-entropy, discrete-time survival NLL, consistency loss."""

from smml_jax.losses.classification import ORIGINAL_CLASS_WEIGHTS, class_weights_from_labels, weighted_cross_entropy
from smml_jax.losses.consistency import batch_consistency_loss
from smml_jax.losses.survival import (
  hazards_from_logits,
  risk_from_hazards,
  risk_from_logits,
  survival_curve,
  survival_nll,
)
