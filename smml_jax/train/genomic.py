"""A small jit training loop for patient-level genomic records (whole arrays in memory).

One epoch is one `jax.lax.scan` over shuffled minibatches (the permutation comes from a numpy
generator seeded by the caller; the last batch is padded and masked), Adam from the project
factory (`make_optimizer`, cosine per epoch, coupled L2), gradient coordination of the leaves the
model's `ModelSpec.splits` names (the fused classifier kernel of `subspace-genomic`).

Model selection: with a validation set (`select_on_val`, protocol pnas15) the epoch with the best
validation macro AUC (classification) or Harrell's C-index (survival) is kept and its parameters
restored; without one (mcat5, whose `val` is the test fold) the parameters after the last epoch are
returned and the held-out fold is never looked at.

Loss: class-weighted CE (weights fitted on the training labels) or the discrete-time survival NLL
on bins fitted on the training split. A model returning per-subspace logits
(`logits_tumour`, `logits_micro`) adds their task losses; in `subspace-genomic` they read
stop-gradient embeddings, so this trains the heads only.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Literal, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from smml_jax.models.registry import ModelSpec
from smml_jax.optim.coordination import coordinate_gradients
from smml_jax.optim.factory import OptimConfig, make_optimizer
from smml_jax.tasks import Task, get_task


@dataclasses.dataclass(frozen=True)
class GenomicTrainConfig:
  """Training settings (fixed a priori; nothing here is tuned on a test fold).

  Attributes:
    task: 'grading' | 'diagnosis' | 'subtype' | 'survival'.
    num_classes: K (number of classes, or survival bins).
    epochs: training epochs (the cosine schedule's T_max).
    batch_size: patients per step.
    learning_rate, weight_decay: Adam peak lr and coupled L2 decay.
    select_on_val: keep the best validation epoch (needs a validation set).
    coordination_mode: 'pcgrad' or 'reference' (see `coordinate_blocks`).
    coordination: apply coordination when the model supports it.
    survival_alpha: weight of the extra uncensored term of the survival NLL.
  """
  task: str
  num_classes: int
  epochs: int = 30
  batch_size: int = 32
  learning_rate: float = 1e-3
  weight_decay: float = 1e-4
  select_on_val: bool = True
  coordination_mode: Literal["pcgrad", "reference"] = "pcgrad"
  coordination: bool = True
  survival_alpha: float = 0.0

  def __post_init__(self):
    if self.epochs < 1 or self.batch_size < 1:
      raise ValueError(f"GenomicTrainConfig: need epochs >= 1 and batch_size >= 1, got "
                       f"epochs={self.epochs}, batch_size={self.batch_size}")

  @property
  def task_spec(self) -> Task:
    return get_task(self.task, self.num_classes, survival_alpha=self.survival_alpha)


@dataclasses.dataclass(frozen=True)
class GenomicArrays:
  """One split's patients. genes_tumour (N, Gt), genes_micro (N, Gm) float32 (normalised);
  target (N,) int64: class code, or survival bin; time (N,) float32 days; event (N,) int64."""
  genes_tumour: np.ndarray
  genes_micro: np.ndarray
  target: np.ndarray
  time: np.ndarray
  event: np.ndarray

  def __post_init__(self):
    n = len(self.target)
    for name in ("genes_tumour", "genes_micro", "time", "event"):
      if len(getattr(self, name)) != n:
        raise ValueError(f"GenomicArrays: {name} has {len(getattr(self, name))} rows, target {n}")

  def __len__(self) -> int:
    return len(self.target)

  def device(self) -> dict[str, jax.Array]:
    return {"genes_tumour": jnp.asarray(self.genes_tumour, jnp.float32),
            "genes_micro": jnp.asarray(self.genes_micro, jnp.float32),
            "target": jnp.asarray(self.target, jnp.int32),
            "time": jnp.asarray(self.time, jnp.float32),
            "event": jnp.asarray(self.event, jnp.int32)}


@dataclasses.dataclass(frozen=True)
class TrainResult:
  """params: the selected (or last) parameters; best_epoch: 1-based epoch they come from;
  history: per epoch {'epoch', 'loss', and 'val_score' when validating}."""
  params: Any
  best_epoch: int
  history: list[dict[str, float]]


def _inputs(data: dict[str, jax.Array]) -> dict[str, jax.Array]:
  return {"genes_tumour": data["genes_tumour"], "genes_micro": data["genes_micro"]}


def task_fields(data: dict[str, jax.Array], task: Task) -> dict[str, jax.Array]:
  """`GenomicArrays.device()` fields under the data pipeline's names, which the task reads."""
  return {task.label_field: data["target"], "surv_time": data["time"], "event": data["event"]}


def loss_fn(params, batch, mask, rng, *, spec: ModelSpec, cfg: GenomicTrainConfig,
            class_weights):
  """Fused task loss + per-subspace head losses (when present); returns (total, (out, fused))."""
  out = spec.module.apply({"params": params}, _inputs(batch), train=True, rngs={"dropout": rng})
  task = cfg.task_spec
  fields = task_fields(batch, task)
  fused = task.loss(out.logits, fields, mask, class_weights)
  total = fused
  for head in (out.logits_tumour, out.logits_micro):
    if head is not None:
      total = total + task.loss(head, fields, mask, class_weights)
  return total, (out, fused)


def coordination_args(spec: ModelSpec, params, out, batch, mask, task: Task) -> dict[str, jax.Array]:
  """Modality scores (and skip flag) of the fused classifier's tumour / micro shares on this batch."""
  scores, skip = task.modality_scores(spec.modality_logits(params, out), task_fields(batch, task),
                                      mask)
  return {"modality_scores": scores, "skip": skip}


def make_optimizer_for(spec: ModelSpec, cfg: GenomicTrainConfig, steps_per_epoch: int):
  coordination = None
  if spec.coordination and cfg.coordination:
    coordination = coordinate_gradients(spec.splits, mode=cfg.coordination_mode)
  optim = OptimConfig(learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay,
                      epochs=cfg.epochs)
  return make_optimizer(optim, steps_per_epoch=steps_per_epoch, coordination=coordination)


def make_train_step(spec: ModelSpec, tx, cfg: GenomicTrainConfig):
  """(params, opt_state, batch, mask, rng, class_weights) -> (params, opt_state, fused loss).

  Not jitted; class_weights is (K,) or None (survival: unused)."""
  coordinated = spec.coordination and cfg.coordination

  def step(params, opt_state, batch, mask, rng, class_weights):
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (_, (out, fused)), grads = grad_fn(params, batch, mask, rng, spec=spec, cfg=cfg,
                                       class_weights=class_weights)
    extra = coordination_args(spec, params, out, batch, mask, cfg.task_spec) if coordinated else {}
    updates, opt_state = tx.update(grads, opt_state, params, **extra)
    return optax.apply_updates(params, updates), opt_state, fused

  return step


def _epoch_fn(step):
  """jit: one epoch as a scan over (S, B) index / mask rows."""

  @jax.jit
  def epoch(params, opt_state, rng, data, idx, mask, class_weights):
    def body(carry, xs):
      params, opt_state, rng = carry
      rows, m = xs
      rng, step_rng = jax.random.split(rng)
      batch = jax.tree_util.tree_map(lambda a: a[rows], data)
      params, opt_state, loss = step(params, opt_state, batch, m, step_rng, class_weights)
      return (params, opt_state, rng), loss

    (params, opt_state, rng), losses = jax.lax.scan(body, (params, opt_state, rng), (idx, mask))
    return params, opt_state, rng, losses

  return epoch


def epoch_batches(n: int, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """A shuffled epoch: indices (S, B) int32 and mask (S, B) bool (False = padding)."""
  perm = rng.permutation(n)
  steps = -(-n // batch_size)
  idx = np.zeros(steps * batch_size, np.int32)
  idx[:n] = perm
  mask = np.arange(steps * batch_size) < n
  return idx.reshape(steps, batch_size), mask.reshape(steps, batch_size)


ROW_BUCKET = 128  # arrays are padded to a multiple of this many rows, so splits share compilations


def _pad_rows(data: dict[str, jax.Array], bucket: int = ROW_BUCKET) -> dict[str, jax.Array]:
  n = next(iter(data.values())).shape[0]
  rows = -(-max(n, 1) // bucket) * bucket
  return jax.tree_util.tree_map(lambda a: jnp.pad(a, [(0, rows - n)] + [(0, 0)] * (a.ndim - 1)),
                                data)


@functools.partial(jax.jit, static_argnums=0)
def _forward(module, params, inputs):
  out = module.apply({"params": params}, inputs, train=False)
  return out.logits.astype(jnp.float32)


def predict_logits(spec: ModelSpec, params, arrays: GenomicArrays) -> np.ndarray:
  """(N, K) fused logits in eval mode (no dropout)."""
  return np.asarray(_forward(spec.module, params, _pad_rows(_inputs(arrays.device()))))[:len(arrays)]


@functools.lru_cache(maxsize=32)
def _compiled(spec: ModelSpec, cfg: GenomicTrainConfig, steps_per_epoch: int):
  """(tx, jitted epoch) for one model / config / epoch length, reused across splits and seeds."""
  tx = make_optimizer_for(spec, cfg, steps_per_epoch)
  return tx, _epoch_fn(make_train_step(spec, tx, cfg))


def truth(arrays: GenomicArrays, task: Task) -> dict[str, np.ndarray]:
  """The patients' outcomes under the data pipeline's names (`Task.metrics`' truth)."""
  return {task.label_field: arrays.target, "surv_time": arrays.time, "event": arrays.event}


def validation_score(task: Task, logits: np.ndarray, arrays: GenomicArrays) -> Optional[float]:
  """The task's selection metric (macro one-vs-rest AUC, or Harrell's C-index); None if undefined."""
  return task.metrics(task.prediction(logits), truth(arrays, task))[task.selection_metric]


def train_genomic(spec: ModelSpec, cfg: GenomicTrainConfig, train: GenomicArrays,
                  val: Optional[GenomicArrays] = None, *, seed: int = 0) -> TrainResult:
  """Trains `spec.module` on `train`; selects on `val` when `cfg.select_on_val`.

  Args:
    spec: the model (its `splits` name the coordinated leaves).
    cfg: training settings.
    train: training patients (targets in [0, K); survival bins fitted on them).
    val: validation patients, required when `cfg.select_on_val`.
    seed: seeds initialisation, dropout (jax) and the batch order (numpy).
  """
  if cfg.select_on_val and (val is None or len(val) == 0):
    raise ValueError("train_genomic: select_on_val needs a non-empty validation set")
  if len(train) == 0:
    raise ValueError("train_genomic: the training set is empty")
  task = cfg.task_spec
  class_weights = task.class_weights("train", truth(train, task))
  class_weights = None if class_weights is None else jnp.asarray(class_weights, jnp.float32)
  data = _pad_rows(train.device())
  key = jax.random.PRNGKey(seed)
  init_key, rng = jax.random.split(key)
  params = spec.module.init({"params": init_key, "dropout": init_key},
                            jax.tree_util.tree_map(lambda a: a[:2], _inputs(data)),
                            train=False)["params"]
  steps_per_epoch = -(-len(train) // cfg.batch_size)
  tx, epoch = _compiled(spec, cfg, steps_per_epoch)
  opt_state = tx.init(params)
  order = np.random.default_rng(seed)
  best_params, best_score, best_epoch, history = params, -np.inf, cfg.epochs, []
  for e in range(1, cfg.epochs + 1):
    idx, mask = epoch_batches(len(train), cfg.batch_size, order)
    params, opt_state, rng, losses = epoch(params, opt_state, rng, data, jnp.asarray(idx),
                                           jnp.asarray(mask), class_weights)
    record = {"epoch": e, "loss": float(np.mean(np.asarray(losses)))}
    if cfg.select_on_val:
      score = validation_score(task, predict_logits(spec, params, val), val)
      record["val_score"] = np.nan if score is None else score
      if score is not None and score > best_score:
        best_params, best_score, best_epoch = params, score, e
    history.append(record)
  if not cfg.select_on_val or best_score == -np.inf:
    best_params, best_epoch = params, cfg.epochs
  return TrainResult(best_params, best_epoch, history)


__all__ = ["GenomicArrays", "GenomicTrainConfig", "TrainResult", "train_genomic",
           "predict_logits", "validation_score", "epoch_batches", "make_train_step",
           "coordination_args", "task_fields", "truth"]
