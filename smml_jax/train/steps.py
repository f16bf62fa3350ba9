"""The jit-compiled train and eval steps: forward, losses, gradients, coordination, optimiser."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from smml_jax.losses.consistency import batch_consistency_loss
from smml_jax.losses.distillation import feature_matching
from smml_jax.models.registry import ModelSpec
from smml_jax.optim.coordination import CoordinationState, coordinate_gradients
from smml_jax.optim.factory import OptimConfig, make_optimizer, trainable_mask_from_predicate
from smml_jax.tasks import Task, get_task
from smml_jax.train.state import TrainState

MODEL_INPUTS = ("patches", "genes_tumour", "genes_micro")
# (B,) bool, False for a patient without expression (the Preprocessor adds it to every batch).
PRESENCE = "has_expression"


@dataclasses.dataclass(frozen=True)
class Distillation:
  """The distillation terms' weights (`train.config.DistillConfig`)."""

  temperature: float = 2.0
  kd_weight: float = 0.01
  feature_weight: float = 0.01


# The outputs matched to the teacher's: the subspace embeddings and the gene embeddings.
DISTILLED_FEATURES = ("embed_tumour", "embed_micro", "gene_tumour", "gene_micro")


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """What the loss adds up: the task loss plus `consistency_weight` x each subspace's BatchLoss.

  `task` is a `Task`, or a task name (its default number of outputs). `head_losses` adds the
  task loss of the per-subspace heads (`logits_tumour`, `logits_micro`) a model returns; where
  they read stop-gradient embeddings (`subspace-genomic`) this trains the heads only.
  """

  task: Task | str
  class_weights: Optional[tuple[float, ...]] = None
  consistency_weight: float = 0.5
  consistency_mode: str = "reference"
  coordination: bool = True
  head_losses: bool = False
  distill: Optional[Distillation] = None  # with a teacher: its KD and feature-matching terms

  def __post_init__(self):
    if isinstance(self.task, str):
      object.__setattr__(self, "task", get_task(self.task))


def model_inputs(batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  """The batch fields a model reads; a bag-free (genomics-only) batch has no `patches`, and
  `has_expression` is carried when some examples lack expression."""
  return {k: batch[k] for k in MODEL_INPUTS + (PRESENCE,) if k in batch}


def with_expression(batch: Mapping[str, jax.Array], mask: Optional[jax.Array]) -> Optional[jax.Array]:
  """(B,) bool: `mask` (real examples) and `has_expression` (when the batch carries it)."""
  if PRESENCE not in batch:
    return mask
  present = jnp.asarray(batch[PRESENCE], bool)
  return present if mask is None else present & jnp.asarray(mask, bool)


def task_loss(logits: jax.Array, batch: Mapping[str, jax.Array], cfg: LossConfig) -> jax.Array:
  """The task loss; a batch's (K,) `class_weights` stands in for `cfg.class_weights` (a study
  refitting them per split then reuses one compiled step)."""
  weights = batch["class_weights"] if "class_weights" in batch else cfg.class_weights
  return cfg.task.loss(logits, batch, batch["mask"], weights)


def distillation_parts(out, teacher_out, mask: jax.Array, cfg: LossConfig) -> dict[str, jax.Array]:
  """{'distill_kd': T^2 KL of the logits, 'distill_<field>': MSE of each DISTILLED_FEATURES}."""
  d = cfg.distill
  parts = {
    "distill_kd": cfg.task.distillation_loss(
      out.logits.astype(jnp.float32), teacher_out.logits.astype(jnp.float32), temperature=d.temperature, mask=mask
    )
  }
  for field in DISTILLED_FEATURES:
    parts[f"distill_{field}"] = feature_matching(getattr(out, field), getattr(teacher_out, field), mask)
  return parts


def loss_fn(
  params,
  batch,
  rng,
  *,
  spec: ModelSpec,
  cfg: LossConfig,
  train: bool,
  teacher: Optional[nn.Module] = None,
  teacher_params: Any = None,
):
  """Total loss and (model output, loss parts) for one global batch.

  With a `teacher` (module, eval mode, frozen `teacher_params`) the distillation terms of
  `cfg.distill` are added.
  """
  out = spec.module.apply({"params": params}, model_inputs(batch), train=train, rngs={"dropout": rng})
  logits = out.logits.astype(jnp.float32)
  parts = {"task_loss": task_loss(logits, batch, cfg)}
  total = parts["task_loss"]
  if spec.consistency and cfg.consistency_weight > 0:
    for name, gene, grid in (("tumour", out.gene_tumour, out.grid_tumour), ("micro", out.gene_micro, out.grid_micro)):
      if gene is None:
        continue
      # Only pairs that both have expression: an absent patient's gene embedding is the shared
      # absent token, which says nothing about how similar its grids should be to others'.
      bl = batch_consistency_loss(
        gene.astype(jnp.float32),
        grid.astype(jnp.float32),
        mode=cfg.consistency_mode,
        mask=with_expression(batch, batch["mask"]),
      ).sum()
      parts[f"consistency_{name}"] = bl
      total = total + cfg.consistency_weight * bl
  if cfg.head_losses:
    for name in ("tumour", "micro"):
      head = getattr(out, f"logits_{name}")
      if head is not None:
        parts[f"head_loss_{name}"] = task_loss(head.astype(jnp.float32), batch, cfg)
        total = total + parts[f"head_loss_{name}"]
  if teacher is not None:
    teacher_out = teacher.apply({"params": jax.lax.stop_gradient(teacher_params)}, model_inputs(batch), train=False)
    distill = distillation_parts(out, teacher_out, batch["mask"], cfg)
    parts.update(distill)
    total = (
      total
      + cfg.distill.kd_weight * distill["distill_kd"]
      + cfg.distill.feature_weight * sum(distill[f"distill_{f}"] for f in DISTILLED_FEATURES)
    )
  parts["loss"] = total
  return total, (out, parts)


def coordination_args(
  spec: ModelSpec, params, out, batch, task: Task, mask: Optional[jax.Array] = None
) -> dict[str, Any]:
  """The modality scores and skip flag the coordination transform takes as extra args.

  The scores use the examples with expression only (the subspaces differ by their genes, so an
  absent patient cannot rank them); a batch with none present coordinates nothing.
  """
  present = with_expression(batch, mask)
  scores, skip = task.modality_scores(spec.modality_logits(params, out), batch, present)
  if present is not None:
    skip = skip | ~jnp.any(present)
  return {"modality_scores": scores, "skip": skip}


def coordination_edited(opt_state) -> Optional[jax.Array]:
  """() fraction of coordinated rows (e.g. classifier output units) the last update edited.

  A row counts once however many of its modality blocks changed; None without coordination.
  """
  found = [
    s
    for s in jax.tree_util.tree_leaves(opt_state, is_leaf=lambda x: isinstance(x, CoordinationState))
    if isinstance(s, CoordinationState)
  ]
  rows = [jnp.any(c, axis=0) for s in found for c in s.changed.values()]  # (R,) per leaf
  if not rows:
    return None
  return jnp.mean(jnp.concatenate(rows).astype(jnp.float32))


def make_run_optimizer(
  spec: ModelSpec, optim: OptimConfig, *, steps_per_epoch: int, coordination_mode: Optional[str] = None
) -> optax.GradientTransformationExtraArgs:
  """The optimiser of a run: `optim`, the spec's frozen leaves masked out, and gradient
  coordination of `spec.splits` in `coordination_mode` ('pcgrad' | 'reference'; None = off)."""
  frozen = spec.frozen
  trainable = (
    trainable_mask_from_predicate(lambda path, leaf: not any(path.startswith(f) for f in frozen)) if frozen else None
  )
  coordination = None
  if coordination_mode is not None and spec.coordination:
    coordination = coordinate_gradients(spec.splits, mode=coordination_mode)
  return make_optimizer(optim, steps_per_epoch=steps_per_epoch, trainable=trainable, coordination=coordination)


def make_train_step(
  spec: ModelSpec,
  tx: optax.GradientTransformationExtraArgs,
  cfg: LossConfig,
  learning_rate: Optional[optax.Schedule] = None,
  teacher: Any = None,
  mesh: Optional[Mesh] = None,
):
  """(state, batch) -> (state, metrics); jit-compiled, the state buffers donated.

  metrics: the loss parts, grad_norm, the modality scores and `coordination_edited` when
  coordinating, and `learning_rate` (the schedule at the step taken) when given.
  `teacher` (`train.teacher.Teacher`, with `cfg.distill`): its frozen params are an argument of
  the compiled step, its outputs computed inside it.
  `mesh`: the mesh the batch is sharded over; the step is traced under it (`under_mesh`).
  """
  if teacher is not None and cfg.distill is None:
    raise ValueError("make_train_step: a teacher needs LossConfig.distill (its loss weights)")

  def step(state: TrainState, batch, teacher_params=None):
    rng, step_rng = jax.random.split(state.rng)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (_, (out, parts)), grads = grad_fn(
      state.params,
      batch,
      step_rng,
      spec=spec,
      cfg=cfg,
      train=True,
      teacher=None if teacher is None else teacher.module,
      teacher_params=teacher_params,
    )
    extra = coordination_args(spec, state.params, out, batch, cfg.task, batch["mask"]) if cfg.coordination else {}
    updates, opt_state = tx.update(grads, state.opt_state, state.params, **extra)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(parts, grad_norm=optax.tree.norm(grads))
    # One scalar the loop checks on the host: a non-finite loss part or gradient stops the run.
    metrics["finite"] = jnp.all(jnp.isfinite(jnp.stack(list(metrics.values()))))
    if "modality_scores" in extra:
      metrics["score_tumour"], metrics["score_micro"] = extra["modality_scores"]
    edited = coordination_edited(opt_state)
    if edited is not None:
      metrics["coordination_edited"] = edited
    if learning_rate is not None:
      metrics["learning_rate"] = jnp.asarray(learning_rate(state.step), jnp.float32)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=rng), metrics

  compiled = jax.jit(under_mesh(step, mesh), donate_argnums=0)
  if teacher is None:
    return compiled
  return functools.partial(compiled, teacher_params=teacher.params)


def make_eval_step(spec: ModelSpec, mesh: Optional[Mesh] = None):
  """(params, batch) -> dict of fused and per-subspace logits (eval mode); traced under `mesh`
  (`under_mesh`) when given."""

  def step(params, batch):
    out = spec.module.apply({"params": params}, model_inputs(batch), train=False)
    result = {"logits": out.logits.astype(jnp.float32)}
    for name in ("logits_tumour", "logits_micro"):
      if getattr(out, name) is not None:
        result[name] = getattr(out, name).astype(jnp.float32)
    return result

  return jax.jit(under_mesh(step, mesh))


def under_mesh(fn: Callable, mesh: Optional[Mesh]) -> Callable:
  """`fn` traced with `mesh` as the abstract mesh in context (axes Auto: GSPMD still partitions
  the step): ops GSPMD cannot partition, the Pallas attention's Mosaic kernels, run per shard in
  a `jax.shard_map` over it (`ops/pallas_attention.py`). None: `fn` itself."""
  if mesh is None:
    return fn

  @functools.wraps(fn)
  def traced(*args, **kwargs):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return fn(*args, **kwargs)

  return traced
