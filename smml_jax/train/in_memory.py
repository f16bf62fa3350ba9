"""Training on in-memory patient arrays (the genomic study) with the slide runs' machinery.

The same train step, loss (`steps.loss_fn` via `LossConfig`), optimiser (`make_run_optimizer`:
Adam from `optim.factory`, cosine per epoch, gradient coordination of the spec's
`{leaf: ModalitySplit}`), epoch loop (`epoch.epoch_steps`), eval step and Task (loss, metrics,
selection metric) as `train.loop.train`; what differs is only where batches come from (shuffled,
padded and masked rows of `GenomicArrays` instead of the TFDS pipeline) and that the selected
parameters stay in memory instead of a run directory.

Selection: with `select_on_val` the epoch with the best validation selection metric (macro AUC;
Harrell's C-index) is kept, as in the main loop; without it (protocol mcat5, whose `val` is the
test fold) the parameters after the last epoch are kept and nothing held out is looked at.
Epochs are 0-based (`best_epoch` in [0, epochs)).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from smml_jax.data.patient_arrays import GenomicArrays, epoch_batches, iterate_batches, padded
from smml_jax.models.registry import ModelSpec
from smml_jax.optim.factory import OptimConfig
from smml_jax.train.epoch import TrainingDiverged, epoch_steps
from smml_jax.train.state import TrainState
from smml_jax.train.steps import LossConfig, make_eval_step, make_run_optimizer, make_train_step, model_inputs


@dataclasses.dataclass(frozen=True)
class FitResult:
  """params: the selected (or last) parameters, on the host; best_epoch: the 0-based epoch they
  come from; history: per epoch {'epoch', the mean step metrics ('loss', 'task_loss', ...) and
  'val_score' when selecting}."""

  params: Any
  best_epoch: int
  history: list[dict[str, float]]


@functools.lru_cache(maxsize=32)
def _compiled(
  spec: ModelSpec, loss: LossConfig, optim: OptimConfig, steps_per_epoch: int, coordination_mode: Optional[str]
):
  """(tx, jitted train step), reused across splits and seeds with the same settings."""
  tx = make_run_optimizer(
    spec, optim, steps_per_epoch=steps_per_epoch, coordination_mode=coordination_mode if loss.coordination else None
  )
  return tx, make_train_step(spec, tx, loss)


@functools.lru_cache(maxsize=8)
def _eval_step(spec: ModelSpec):
  return make_eval_step(spec)


def predict_logits(spec: ModelSpec, params, arrays: GenomicArrays) -> np.ndarray:
  """(N, K) float32 fused logits in eval mode (no dropout)."""
  batch = padded(arrays.fields("target"))
  out = _eval_step(spec)(params, model_inputs(batch))
  return np.asarray(out["logits"])[: len(arrays)]


def selection_score(spec: ModelSpec, params, arrays: GenomicArrays, loss: LossConfig) -> Optional[float]:
  """The task's selection metric on `arrays` (macro AUC, or C-index); None where undefined."""
  task = loss.task
  logits = predict_logits(spec, params, arrays)
  return task.metrics(task.prediction(logits), arrays.truth(task.label_field))[task.selection_metric]


def fit(
  spec: ModelSpec,
  loss: LossConfig,
  optim: OptimConfig,
  train: GenomicArrays,
  val: Optional[GenomicArrays] = None,
  *,
  batch_size: int = 32,
  select_on_val: bool = True,
  coordination_mode: Optional[str] = "pcgrad",
  seed: int = 0,
) -> FitResult:
  """Trains `spec.module` for `optim.epochs` epochs on `train`; selects on `val` if asked.

  Args:
    spec: the model (its `coordinated` leaves are coordinated when `loss.coordination`).
    loss: the loss (task, class weights fitted on `train`, head losses).
    optim: the optimiser; `optim.epochs` is the number of epochs (the cosine's T_max).
    train: training patients (targets in [0, K); survival bins fitted on them).
    val: validation patients, required when `select_on_val`.
    batch_size: patients per step; the last batch of an epoch is padded and masked.
    select_on_val: keep the best validation epoch.
    coordination_mode: 'pcgrad' | 'reference' (see `optim.coordination`).
    seed: seeds initialisation, dropout (jax) and the batch order (numpy).

  Raises:
    ValueError: empty training set, or `select_on_val` without validation patients.
    TrainingDiverged: a non-finite loss or gradient (names the epoch).
  """
  if len(train) == 0:
    raise ValueError("fit: the training set is empty")
  if select_on_val and (val is None or len(val) == 0):
    raise ValueError("fit: select_on_val needs a non-empty validation set")
  if batch_size < 1:
    raise ValueError(f"fit: batch_size must be >= 1, got {batch_size}")
  fields = train.fields(loss.task.label_field)
  # The (K,) class weights ride in each batch: traced, one compiled step serves every split.
  weights = {} if loss.class_weights is None else {"class_weights": np.asarray(loss.class_weights, np.float32)}
  init_key, rng = jax.random.split(jax.random.PRNGKey(seed))
  sample = model_inputs({k: v[:2] for k, v in fields.items()})
  params = spec.module.init({"params": init_key, "dropout": init_key}, sample, train=False)["params"]
  steps_per_epoch = -(-len(train) // batch_size)
  tx, train_step = _compiled(
    spec, dataclasses.replace(loss, class_weights=None), optim, steps_per_epoch, coordination_mode
  )
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=rng)
  order = np.random.default_rng(seed)
  best_params, best_score, best_epoch, history = None, -np.inf, optim.epochs - 1, []
  for epoch in range(optim.epochs):
    batches = (
      dict(batch, **weights) for batch in iterate_batches(fields, *epoch_batches(len(train), batch_size, order))
    )
    rows = []
    for stepped, metrics in epoch_steps(train_step, state, batches):
      state = stepped
      rows.append(metrics)
    rows = jax.device_get(rows)
    if not all(bool(r["finite"]) for r in rows):
      raise TrainingDiverged(
        f"training diverged in epoch {epoch} (0-based): a non-finite loss "
        f"or gradient; lower the learning rate or check the inputs"
      )
    record = {"epoch": epoch, **{k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "finite"}}
    if select_on_val:
      score = selection_score(spec, state.params, val, loss)
      record["val_score"] = np.nan if score is None else score
      if score is not None and score > best_score:
        # A host copy: the next step donates the state's buffers.
        best_params, best_score, best_epoch = jax.device_get(state.params), score, epoch
    history.append(record)
  if best_params is None:
    best_params, best_epoch = jax.device_get(state.params), optim.epochs - 1
  return FitResult(best_params, best_epoch, history)
