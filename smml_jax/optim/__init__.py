"""Optimisers: the original's Adam set-up and gradient coordination between modalities."""

from smml_jax.optim.coordination import (
  CoordinationState,
  ModalitySplit,
  coordinate_blocks,
  coordinate_gradients,
  param_path,
)
from smml_jax.optim.factory import OptimConfig, epoch_schedule, make_optimizer, trainable_mask_from_predicate
