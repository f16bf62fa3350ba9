"""The optimiser: the original's Adam with coupled L2 decay and a per-epoch cosine schedule."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Literal, Optional, Union

import jax
import jax.numpy as jnp
import optax

from smml_jax.optim.coordination import param_path


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """Optimiser settings; the defaults are the original's (README §5).

  Attributes:
    name: 'adam', 'adamw' (= adam with decoupled decay) or 'sgd'.
    learning_rate: peak learning rate.
    b1, b2, eps: Adam moments (torch defaults).
    momentum: SGD momentum (0 = plain SGD).
    weight_decay: decay factor.
    coupled_weight_decay: True = L2 added to the gradient before the moments
      (torch Adam `weight_decay`, the original); False = decoupled (AdamW: decay scaled by
      the learning rate, applied after the moments). 'adamw' is always decoupled.
    schedule: 'cosine' (torch CosineAnnealingLR with T_max = epochs, eta_min =
      min_learning_rate, stepped once per EPOCH) or 'constant'.
    epochs: number of training epochs (T_max of the cosine).
    warmup_epochs: linear warm-up epochs before the cosine (0 = none, the original).
    min_learning_rate: eta_min of the cosine.
  """

  name: Literal["adam", "adamw", "sgd"] = "adam"
  learning_rate: float = 1e-3
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  momentum: float = 0.0
  weight_decay: float = 0.1
  coupled_weight_decay: bool = True
  schedule: Literal["cosine", "constant"] = "cosine"
  epochs: int = 20
  warmup_epochs: int = 0
  min_learning_rate: float = 0.0

  def __post_init__(self):
    if self.name not in ("adam", "adamw", "sgd"):
      raise ValueError(f"OptimConfig.name: expected 'adam', 'adamw' or 'sgd', got {self.name!r}")
    if self.schedule not in ("cosine", "constant"):
      raise ValueError(f"OptimConfig.schedule: expected 'cosine' or 'constant', got {self.schedule!r}")
    if self.epochs < 1 or not 0 <= self.warmup_epochs < self.epochs:
      raise ValueError(
        f"OptimConfig: need epochs >= 1 and 0 <= warmup_epochs < epochs, got "
        f"epochs={self.epochs}, warmup_epochs={self.warmup_epochs}"
      )


def epoch_schedule(config: OptimConfig, steps_per_epoch: int) -> optax.Schedule:
  """Learning rate as a function of the step, constant within each epoch.

  epoch e = step // steps_per_epoch. Warm-up epochs e < W: lr (e + 1) / (W + 1). Then the
  cosine over the remaining epochs, lr_min + (lr - lr_min)(1 + cos(pi (e - W) / (E - W))) / 2
  (torch's CosineAnnealingLR closed form, reaching lr_min at epoch E); 'constant' keeps lr.
  """
  if steps_per_epoch < 1:
    raise ValueError(f"epoch_schedule: steps_per_epoch must be >= 1, got {steps_per_epoch}")
  lr, lr_min = config.learning_rate, config.min_learning_rate
  warm, total = config.warmup_epochs, config.epochs

  def schedule(step):
    epoch = (jnp.asarray(step) // steps_per_epoch).astype(jnp.float32)
    if config.schedule == "constant":
      main = jnp.asarray(lr, jnp.float32)
    else:
      frac = jnp.clip((epoch - warm) / (total - warm), 0.0, 1.0)
      main = lr_min + (lr - lr_min) * 0.5 * (1.0 + jnp.cos(math.pi * frac))
    if warm > 0:
      return jnp.where(epoch < warm, lr * (epoch + 1.0) / (warm + 1.0), main)
    return main

  return schedule


def trainable_mask_from_predicate(predicate: Callable[[str, Any], bool]) -> Callable[[Any], Any]:
  """A mask function for `make_optimizer`: params -> pytree of bools.

  `predicate(path, leaf)` gets the '/'-joined parameter path (e.g.
  'classifier_tumour/kernel') and returns True for parameters that are trained.
  """

  def mask_fn(params):
    return jax.tree_util.tree_map_with_path(lambda p, x: bool(predicate(param_path(p), x)), params)

  return mask_fn


def _core(config: OptimConfig, schedule: optax.Schedule) -> optax.GradientTransformation:
  decay = optax.add_decayed_weights(config.weight_decay) if config.weight_decay else optax.identity()
  coupled = config.coupled_weight_decay and config.name != "adamw"
  if config.name == "sgd":
    moments = optax.trace(decay=config.momentum) if config.momentum else optax.identity()
  else:
    moments = optax.scale_by_adam(b1=config.b1, b2=config.b2, eps=config.eps)
  parts = [decay, moments] if coupled else [moments, decay]
  return optax.chain(*parts, optax.scale_by_learning_rate(schedule))


def make_optimizer(
  config: OptimConfig,
  *,
  steps_per_epoch: int,
  trainable: Union[None, Any, Callable[[Any], Any]] = None,
  coordination: Optional[optax.GradientTransformationExtraArgs] = None,
) -> optax.GradientTransformationExtraArgs:
  """optax.chain(coordination, masked(optimiser), zero updates for frozen leaves).

  Args:
    config: `OptimConfig` (defaults = the original: Adam .9/.999/1e-8, coupled L2 0.1,
      lr 1e-3, cosine over 20 epochs stepped per epoch).
    steps_per_epoch: optimiser steps per epoch (the schedule is constant within an epoch).
    trainable: pytree of bools shaped like the params, or a function params -> such a
      pytree (see `trainable_mask_from_predicate`); False marks parameters that never get a
      gradient (in the original: the per-subspace heads that are only logged, unused
      encoder heads). PyTorch skips them entirely (grad None); JAX gives them zero
      gradients, which would still be weight-decayed and enter the moments, so they are
      masked out of the optimiser and their updates set to zero. None = all trainable.
    coordination: e.g. `coordinate_gradients(...)`, placed first in the chain; its extra
      arguments (`modality_scores`, `skip`) are passed through `update`.

  Returns:
    A `GradientTransformationExtraArgs`.
  """
  core = _core(config, epoch_schedule(config, steps_per_epoch))
  parts = [coordination] if coordination is not None else []
  if trainable is None:
    parts.append(core)
  else:
    if callable(trainable):
      frozen = lambda params: jax.tree_util.tree_map(lambda t: not t, trainable(params))
    else:
      frozen = jax.tree_util.tree_map(lambda t: not t, trainable)
    parts += [optax.masked(core, trainable), optax.masked(optax.set_to_zero(), frozen)]
  return optax.chain(*parts)
