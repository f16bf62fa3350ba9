"""Run configuration as data: nested frozen dataclasses, loaded from YAML/JSON and `key=value`.

Everything is checked when the config is parsed, before a run touches its directory: unknown
keys (with a did-you-mean), wrong types, bad choices, non-positive sizes and rates, the model's
name and its `model_options`, and the selection metric for the task. Each raises `ConfigError`
naming the dotted key. `optim.epochs` is not a key: the schedule always spans `train.epochs`.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any, Mapping, Optional, Sequence

from smml_jax.data.errors import did_you_mean
from smml_jax.data.labels import TASK_NUM_CLASSES
from smml_jax.ops.dispatch import ATTENTION_IMPLEMENTATIONS, SAMPLERS
from smml_jax.optim.factory import OptimConfig
from smml_jax.train.config_compat import add_new_keys, drop_removed_keys, move_impl_keys

# The noqa sits after "(" so that it covers every name, also once `ruff format` puts one per line.
from smml_jax.train.config_layers import (  # noqa: F401  (read_config_file: re-exported)
  ConfigError,
  merge,
  parse_override,
  read_config_file,
)
from smml_jax.train.config_values import check_range, check_type


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Which cohort, how it is split and preprocessed (all statistics fit on the training split)."""

  data: str = "synthetic"  # 'synthetic' or a cohort spec file (YAML/JSON)
  data_dir: Optional[str] = None  # where cohort records are written; default: user cache
  split: str = "original"  # 'original' (seeded 80/10/10), 'kfold' or 'file'
  fold: int = 0
  n_folds: int = 5
  split_file: Optional[str] = None
  split_seed: int = 0
  val_fraction: float = 0.1
  test_fraction: float = 0.1
  stratify: Optional[str] = "diagnosis"
  gene_transform: Optional[str] = None  # None: the cohort's default
  gene_clip: Optional[float] = None
  survival_cuts: Any = "train"  # 'train' (training-split quartiles), 'original' or a list (days)
  # Fraction of the TRAINING patients with expression whose expression is dropped (run seed).
  drop_expression: float = 0.0


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """The training loop."""

  epochs: int = 20
  batch_size: int = 8
  eval_batch_size: int = 16
  seed: int = 0
  eval_every_steps: int = 0  # 0: evaluate once per epoch only
  class_weights: str = "train"  # 'train' (training-split frequencies), 'original' or 'none'
  consistency_weight: float = 0.5  # per subspace; 0 disables the consistency loss
  consistency_mode: str = "reference"  # or 'per_sample'
  coordination: str = "pcgrad"  # 'pcgrad', 'reference' or 'none'
  # How coordination ranks the modalities: 'auto' (the paper's: classification confidence,
  # survival batch C-index), 'confidence' or 'cindex' (survival); see tasks.get_task.
  coordination_score: str = "auto"
  survival_alpha: float = 0.0
  selection_metric: str = "auto"  # 'auto': auc (classification) / c_index (survival), on VAL
  compute_dtype: str = "float32"  # or 'bfloat16' (params, softmax and losses stay float32)
  progress: bool = True
  log_test_every_epoch: bool = False  # console; metrics.jsonl and TensorBoard always hold test


@dataclasses.dataclass(frozen=True)
class ImplConfig:
  """How the model is computed, not what it computes: the same function on every setting (up to
  float rounding), so these are not part of a run's identity and `--resume` accepts a change.
  The subspace models use them; the baselines have one implementation."""

  attention: str = "auto"  # 'auto' (by the devices' platform), 'native', 'fused', 'chunked', 'reference'
  query_tile: int = 0  # queries per attention tile; 0: about `tile_pairs` (query, key) pairs
  tile_pairs: int = 73_728
  sampler: str = "auto"  # 'auto' (by the devices' platform: matmul on TPU, else gather), 'gather', 'matmul'
  # Also save a checkpoint (with the data iterator's position) every N train steps; 0: at epoch
  # ends only. Resuming from one is exact, so the interval is not part of the run's identity.
  checkpoint_every_steps: int = 0

  def model_options(self) -> dict[str, Any]:
    """As `models.registry.build_model`'s `impl` options."""
    return {
      "attention_impl": self.attention,
      "query_tile": self.query_tile,
      "tile_pairs": self.tile_pairs,
      "sampler": self.sampler,
    }


@dataclasses.dataclass(frozen=True)
class DistillConfig:
  """Distillation of `--model subspace-student` from a trained `subspace` run (the teacher, which
  must have been trained on the same split: `smml_jax.train.teacher`). Loss = task loss +
  kd_weight * T^2 KL(teacher_T || student_T) + feature_weight * the summed MSE of the two subspace
  embeddings and the two gene embeddings (student's predicted vs teacher's SNN)."""

  teacher: Optional[str] = None  # the teacher's run directory (--teacher RUN_DIR)
  temperature: float = 2.0
  kd_weight: float = 0.01
  feature_weight: float = 0.01


# Sections of a config that do not change the function trained (not compared on --resume).
NOT_IDENTITY = ("impl",)


@dataclasses.dataclass(frozen=True)
class RunConfig:
  task: str = "grading"
  model: str = "subspace"
  model_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  data: DataConfig = DataConfig()
  optim: OptimConfig = OptimConfig()
  train: TrainConfig = TrainConfig()
  impl: ImplConfig = ImplConfig()
  distill: DistillConfig = DistillConfig()

  def __post_init__(self):
    # The cosine schedule's length is the run's epoch count, never a second, separate setting.
    if self.optim.epochs != self.train.epochs and self.train.epochs >= 1:
      try:
        object.__setattr__(self, "optim", dataclasses.replace(self.optim, epochs=self.train.epochs))
      except ValueError as e:
        raise ConfigError(f"config key 'optim.warmup_epochs': {e}") from None

  @property
  def num_classes(self) -> int:
    return TASK_NUM_CLASSES[self.task]


_CHOICES = {
  "task": tuple(TASK_NUM_CLASSES),
  "data.split": ("original", "kfold", "file"),
  "train.class_weights": ("train", "original", "none"),
  "train.consistency_mode": ("reference", "per_sample"),
  "train.coordination": ("pcgrad", "reference", "none"),
  "train.coordination_score": ("auto", "confidence", "cindex"),
  "train.compute_dtype": ("float32", "bfloat16"),
  "impl.attention": ATTENTION_IMPLEMENTATIONS,
  "impl.sampler": SAMPLERS,
}
# Ranges of the keys whose dataclass does not declare one in its field metadata (the model options
# do, see `models.registry.options_class`): 'min' (>=), 'above' (>), 'below' (<).
_RANGES = {
  key: {"above": 0}
  for key in ("train.epochs", "train.batch_size", "train.eval_batch_size", "optim.learning_rate", "data.n_folds")
}
_RANGES["impl.checkpoint_every_steps"] = {"min": 0}  # 0: off
_RANGES.update(
  {"distill.temperature": {"above": 0}, "distill.kd_weight": {"min": 0}, "distill.feature_weight": {"min": 0}}
)
# Keys that no longer exist -> what to use instead.
_REMOVED = {"optim.epochs": "the learning-rate schedule always spans train.epochs; set train.epochs (--epochs) instead"}


def _build(cls, values: Mapping[str, Any], prefix: str):
  if not isinstance(values, Mapping):
    raise ConfigError(f"config key {prefix.rstrip('.') or '<root>'!r}: expected a mapping, got {values!r}")
  hints = typing.get_type_hints(cls)
  fields = {f.name: f for f in dataclasses.fields(cls)}
  for name in values:
    if prefix + name in _REMOVED:
      raise ConfigError(f"config key {prefix + name!r} was removed: {_REMOVED[prefix + name]}")
  if cls is OptimConfig:
    fields.pop("epochs")
  unknown = sorted(set(values) - set(fields))
  if unknown:
    hints_ = "".join(did_you_mean(k, fields, f" (did you mean {prefix}{{}}?)") for k in unknown)
    raise ConfigError(
      f"unknown config key(s) {[prefix + k for k in unknown]}{hints_}; valid keys "
      f"under {prefix.rstrip('.') or 'the root'}: {sorted(fields)}"
    )
  kwargs = {}
  for name, value in values.items():
    key, hint = prefix + name, hints[name]
    if dataclasses.is_dataclass(hint):
      kwargs[name] = _build(hint, value, key + ".")
    else:
      kwargs[name] = check_type(value, hint, key)
      if key in _CHOICES and kwargs[name] not in _CHOICES[key]:
        raise ConfigError(
          f"config key {key!r}: expected one of {_CHOICES[key]}, got {value!r}{did_you_mean(str(value), _CHOICES[key])}"
        )
      bounds = fields[name].metadata or _RANGES.get(key)
      if bounds:
        check_range(kwargs[name], bounds, key)
  if cls is OptimConfig:  # a placeholder length: RunConfig sets it to train.epochs and checks it
    kwargs["epochs"] = max(OptimConfig.epochs, kwargs.get("warmup_epochs", 0) + 1)
  try:
    return cls(**kwargs)
  except ValueError as e:  # a dataclass's own validation (e.g. OptimConfig)
    raise ConfigError(f"config {prefix.rstrip('.') or 'root'}: {e}") from e


def _check_run(config: RunConfig) -> RunConfig:
  """The checks that need more than one key: the model and its options, the selection metric."""
  from smml_jax.models.registry import build_model, model_names, options_class  # jax: lazily

  if config.model not in model_names():
    raise ConfigError(
      f"config key 'model': unknown model {config.model!r}"
      f"{did_you_mean(config.model, model_names())}; expected one of "
      f"{list(model_names())}"
    )
  if not isinstance(config.model_options, Mapping):
    raise ConfigError(f"config key 'model_options': expected a mapping, got {config.model_options!r}")
  # Typed: each key, its type and range against the model's options dataclass.
  typed = _build(options_class(config.model), config.model_options, "model_options.")
  config = dataclasses.replace(
    config,
    model_options={
      k: list(v) if isinstance(v, tuple) else v for k, v in ((k, getattr(typed, k)) for k in config.model_options)
    },
  )
  try:  # builds the module (no parameters): what only the model can check (e.g. divisibility)
    build_model(
      config.model,
      num_classes=config.num_classes,
      n_genes_tumour=1,
      n_genes_micro=1,
      feature_dim=1,
      options=config.model_options,
    )
  except (ValueError, TypeError) as e:
    raise ConfigError(f"config key 'model_options' (model {config.model!r}): {e}") from None
  from smml_jax.models.registry import STUDENT

  if config.model == STUDENT and not config.distill.teacher:
    raise ConfigError(
      f"config key 'distill.teacher': model {STUDENT!r} is distilled from a "
      "trained 'subspace' run of the same split; give its run directory "
      "(--teacher RUN_DIR)"
    )
  if config.distill.teacher and config.model != STUDENT:
    raise ConfigError(
      f"config key 'distill.teacher': only model {STUDENT!r} learns from a teacher, not model {config.model!r}"
    )
  if not 0.0 <= config.data.drop_expression <= 1.0:
    raise ConfigError(
      f"config key 'data.drop_expression': expected a fraction in [0, 1], got {config.data.drop_expression!r}"
    )
  metric = config.train.selection_metric
  from smml_jax.tasks import get_task

  try:
    get_task(config.task, config.num_classes, coordination_score=config.train.coordination_score)
  except ValueError as e:
    raise ConfigError(f"config key 'train.coordination_score': {e}") from None
  allowed = get_task(config.task, config.num_classes).selectable_metrics
  if metric != "auto" and metric not in allowed:
    raise ConfigError(
      f"config key 'train.selection_metric': {metric!r} is not a validation "
      f"metric of task {config.task!r}{did_you_mean(metric, allowed)}; expected "
      f"'auto' or one of {allowed}"
    )
  return config


def config_to_dict(config: RunConfig) -> dict[str, Any]:
  """The stored form (config.json); `optim.epochs` is derived from train.epochs, so not stored."""
  values = json.loads(json.dumps(dataclasses.asdict(config)))
  values["optim"].pop("epochs", None)
  if values["distill"] == dataclasses.asdict(DistillConfig()):  # runs without a teacher store
    values.pop("distill")  # what they stored before distillation existed
  return values


def make_config(*layers: Mapping[str, Any], overrides: Sequence[str] = ()) -> RunConfig:
  """Merges layers (later wins) and `key=value` overrides into a validated RunConfig."""
  values: dict[str, Any] = {}
  for layer in layers:  # older names move within each layer, so a later layer still wins
    values = merge(values, move_impl_keys(layer))
  for item in overrides:
    values = merge(values, move_impl_keys(parse_override(item)))
  config = _check_run(_build(RunConfig, values, ""))
  if config.data.data != "synthetic":  # the spec's keys and values now, its files when loaded
    from smml_jax.data.errors import CohortError
    from smml_jax.data.spec import check_spec_file

    try:
      check_spec_file(config.data.data)
    except CohortError as e:
      raise ConfigError(f"config key 'data.data': {e}") from None
  return config


def config_from_dict(values: Mapping[str, Any]) -> RunConfig:
  """A stored config.json (older names moved to their sections, removed keys dropped)."""
  return _check_run(_build(RunConfig, move_impl_keys(drop_removed_keys(values)), ""))


def run_identity(values: Mapping[str, Any]) -> dict[str, Any]:
  """A config dict without the sections that do not change the function trained (`impl`), older
  names moved to their sections, removed keys dropped and later keys at the value older runs
  trained with: what `--resume` compares."""
  values = add_new_keys(move_impl_keys(drop_removed_keys(values)))
  return {k: v for k, v in values.items() if k not in NOT_IDENTITY}


def config_difference(stored: Any, current: Any, key: str = "") -> str:
  """The first differing dotted key of two config dicts, as 'key: stored X, now Y' ('' if equal)."""
  if isinstance(stored, Mapping) and isinstance(current, Mapping):
    for k in sorted(set(stored) | set(current)):
      found = config_difference(stored.get(k), current.get(k), f"{key}{k}.")
      if found:
        return found
    return ""
  return "" if stored == current else f"{key.rstrip('.')}: stored {stored!r}, now {current!r}"
