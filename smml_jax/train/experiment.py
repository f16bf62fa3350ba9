"""Everything built from a run config before training: cohort, splits, preprocessing, model,
loss, the batch iterators and the initial TrainState."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from smml_jax.data import missing, normalise, splits as splits_lib
from smml_jax.data import pipeline
from smml_jax.data.pipeline import BatchIterator
from smml_jax.data.spec import load_cohort
from smml_jax.models.deform_attention import DeformAttentionConfig, min_grid_side, offset_grid_side
from smml_jax.models.registry import ModelSpec, build_model, implementations
from smml_jax.ops import dispatch
from smml_jax.tasks import Task, get_task
from smml_jax.train import distributed, sharding, teacher as teacher_lib
from smml_jax.train.config import ConfigError, RunConfig
from smml_jax.train.state import TrainState
from smml_jax.train.steps import LossConfig, make_run_optimizer, model_inputs


def task_of(config: RunConfig) -> Task:
  """The run's task: its name, number of outputs and survival NLL weight."""
  return get_task(
    config.task,
    config.num_classes,
    survival_alpha=config.train.survival_alpha,
    coordination_score=config.train.coordination_score,
  )


def selection_metric(config: RunConfig) -> str:
  if config.train.selection_metric != "auto":
    return config.train.selection_metric
  return task_of(config).selection_metric


@dataclasses.dataclass
class Experiment:
  """Everything built from a config before training: data, preprocessing, model, optimiser."""

  config: RunConfig
  cohort: Any
  splits: dict[str, np.ndarray]
  preprocessor: normalise.Preprocessor
  spec: ModelSpec
  loss_config: LossConfig
  mesh: Any
  dropped: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
  # Some slide of the run has no expression (or has it dropped): batches carry has_expression.
  masked: bool = False


def _labelled(cohort, indices: np.ndarray, task: Task) -> np.ndarray:
  """The slides of `indices` that carry the task's label (survival: a known time)."""
  return np.asarray(indices)[task.labelled(cohort.slides)[indices]]


def build_experiment(config: RunConfig, mesh=None) -> Experiment:
  d = config.data
  with distributed.main_process_first("build_cohort"):  # one writer of the shared record cache
    cohort = load_cohort(d.data, d.data_dir)
  parts = splits_lib.make_splits(
    cohort,
    d.split,
    seed=d.split_seed,
    fold=d.fold,
    n_folds=d.n_folds,
    stratify=d.stratify,
    val_fraction=d.val_fraction,
    test_fraction=d.test_fraction,
    split_file=d.split_file,
  )
  splits_lib.assert_patient_disjoint(cohort, parts)
  task = task_of(config)
  parts = {k: _labelled(cohort, v, task) for k, v in parts.items()}
  for part, idx in parts.items():
    if not len(idx):
      raise ConfigError(f"the {part} split has no slide labelled for task {config.task!r}")
  dropped = missing.dropped_slides(cohort, parts["train"], d.drop_expression, config.train.seed)
  preprocessor = normalise.fit_preprocessor(
    cohort,
    parts["train"],
    gene_transform=d.gene_transform,
    survival_cuts=d.survival_cuts,
    clip=d.gene_clip,
    absent=dropped,
  )
  mesh = mesh if mesh is not None else sharding.make_mesh()
  impl = dict(config.impl.model_options(), platform=dispatch.platform_of(mesh))
  try:
    spec = build_model(
      config.model,
      num_classes=config.num_classes,
      n_genes_tumour=cohort.n_genes_tumour,
      n_genes_micro=cohort.n_genes_micro,
      feature_dim=cohort.feature_dim,
      options=config.model_options,
      impl=impl,
      compute_dtype=config.train.compute_dtype,
    )
  except dispatch.DispatchError as e:
    raise ConfigError(f"config key 'impl.attention': {e}") from e
  except (TypeError, ValueError) as e:  # unknown model, ill-typed model_options, no bf16 option
    raise ConfigError(f"config key 'model' / 'model_options' / 'train.compute_dtype': {e}") from e
  check_grid_side(spec, cohort.grid_side, config)
  try:  # e.g. 'native' on a TPU mesh: refused before anything is traced
    implementations(spec)
  except dispatch.DispatchError as e:
    raise ConfigError(f"config key 'impl.attention': {e}") from e
  t = config.train
  class_weights = task.class_weights(t.class_weights, cohort.slides.iloc[parts["train"]])
  loss_config = LossConfig(
    task=task,
    class_weights=class_weights,
    consistency_weight=t.consistency_weight,
    consistency_mode=t.consistency_mode,
    coordination=spec.coordination and t.coordination != "none",
    distill=teacher_lib.distillation(config),
  )
  masked = bool(len(dropped)) or not all(normalise.has_expression(cohort, v).all() for v in parts.values())
  return Experiment(config, cohort, parts, preprocessor, spec, loss_config, mesh, dropped, masked)


def check_grid_side(spec: ModelSpec, grid_side: int, config: RunConfig) -> None:
  """ConfigError when the cohort's grid is too small for the deformable attention's lattice."""
  attention = getattr(getattr(getattr(spec.module, "config", None), "branch", None), "attention", None)
  if not isinstance(attention, DeformAttentionConfig):
    return
  minimum = min_grid_side(attention.offset_kernel, attention.downsample)
  tokens = grid_side if attention.ndim == 2 else grid_side * grid_side
  if tokens < minimum:
    lattice = offset_grid_side(tokens, attention.offset_kernel, attention.downsample)
    raise ConfigError(
      f"cohort {config.data.data}: grid_side {grid_side} is too small for model "
      f"{config.model!r}: its deformable attention's offset lattice (kernel "
      f"{attention.offset_kernel}, stride {attention.downsample}) would have {max(lattice, 0)} "
      f"point(s) per side and needs at least 2, i.e. a "
      f"{'grid_side' if attention.ndim == 2 else 'token count (grid_side^2)'} of at least "
      f"{minimum}"
    )


def batches(exp: Experiment, part: str, batch_size: int, *, epoch: int = 0, train: bool = False) -> BatchIterator:
  """One epoch of `part` (train: shuffled by (seed, epoch), last partial batch dropped; else in
  order, padded and masked), this JAX process's slice of each global batch."""
  process_index, process_count = pipeline.jax_process_shard()
  preprocess = exp.preprocessor
  if part == "train" and len(exp.dropped):  # data.drop_expression: training patients only
    ids = exp.cohort.slides["slide_id"].to_numpy()[exp.dropped]
    preprocess = missing.DropExpression(frozenset(ids.astype(str)), preprocess)
  if not exp.masked:  # every slide has expression: the unmasked model, as before
    preprocess = missing.WithoutPresence(preprocess)
  return BatchIterator(
    exp.cohort.source,
    exp.splits[part],
    batch_size,
    seed=exp.config.train.seed,
    epoch=epoch,
    shuffle=train,
    drop_remainder=train,
    preprocess=preprocess,
    process_index=process_index,
    process_count=process_count,
  )


def global_batch(size: int, mesh) -> int:
  """Rounds a batch size up to a multiple of the mesh size (every device gets a shard)."""
  n = mesh.devices.size
  return int(math.ceil(size / n) * n)


def init_state(exp: Experiment, steps_per_epoch: int):
  """(TrainState, optimiser) from the config's seed."""
  cfg = exp.config
  key = jax.random.PRNGKey(cfg.train.seed)
  init_key, dropout_key, state_key = jax.random.split(key, 3)
  iterator = iter(batches(exp, "train", global_batch(cfg.train.batch_size, exp.mesh)))
  sample = next(iterator)
  pipeline.close(iterator)
  inputs = {k: jnp.asarray(v[:1]) for k, v in model_inputs(sample).items()}
  params = exp.spec.module.init({"params": init_key, "dropout": dropout_key}, inputs)["params"]
  optim = dataclasses.replace(cfg.optim, epochs=cfg.train.epochs)
  tx = make_run_optimizer(
    exp.spec,
    optim,
    steps_per_epoch=steps_per_epoch,
    coordination_mode=(cfg.train.coordination if exp.loss_config.coordination else None),
  )
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=state_key)
  return sharding.replicate(state, exp.mesh), tx
