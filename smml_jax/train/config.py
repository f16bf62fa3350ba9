"""Run configuration as data: nested frozen dataclasses, loaded from YAML/JSON and `key=value`.

Unknown keys, wrong types and bad values raise `ConfigError` naming the dotted key.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import typing
from typing import Any, Mapping, Optional, Sequence

import yaml

from smml_jax.data.labels import TASK_NUM_CLASSES
from smml_jax.optim.factory import OptimConfig


class ConfigError(ValueError):
  """A configuration value or key that does not fit."""


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
  survival_alpha: float = 0.0
  selection_metric: str = "auto"  # 'auto': auc (classification) / c_index (survival), on VAL
  compute_dtype: str = "float32"  # or 'bfloat16' (params, softmax and losses stay float32)
  progress: bool = True
  log_test_every_epoch: bool = False  # console; metrics.jsonl and TensorBoard always hold test


@dataclasses.dataclass(frozen=True)
class RunConfig:
  task: str = "grading"
  model: str = "subspace"
  model_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  data: DataConfig = DataConfig()
  optim: OptimConfig = OptimConfig()
  train: TrainConfig = TrainConfig()

  @property
  def num_classes(self) -> int:
    return TASK_NUM_CLASSES[self.task]


_CHOICES = {
    "task": tuple(TASK_NUM_CLASSES),
    "data.split": ("original", "kfold", "file"),
    "train.class_weights": ("train", "original", "none"),
    "train.consistency_mode": ("reference", "per_sample"),
    "train.coordination": ("pcgrad", "reference", "none"),
    "train.compute_dtype": ("float32", "bfloat16"),
}


def _check_type(value: Any, hint: Any, key: str) -> Any:
  origin = typing.get_origin(hint)
  if hint is Any or origin in (Mapping, dict) or hint in (dict,):
    if origin in (Mapping, dict) and not isinstance(value, Mapping):
      raise ConfigError(f"config key {key!r}: expected a mapping, got {value!r}")
    return dict(value) if isinstance(value, Mapping) else value
  if origin is typing.Union:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if value is None:
      return None
    return _check_type(value, args[0], key)
  if origin is typing.Literal:
    if value not in typing.get_args(hint):
      raise ConfigError(f"config key {key!r}: expected one of {typing.get_args(hint)}, got {value!r}")
    return value
  if hint is bool:
    if not isinstance(value, bool):
      raise ConfigError(f"config key {key!r}: expected true/false, got {value!r}")
    return value
  if hint is int:
    if isinstance(value, bool) or not isinstance(value, int):
      raise ConfigError(f"config key {key!r}: expected an integer, got {value!r}")
    return value
  if hint is float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise ConfigError(f"config key {key!r}: expected a number, got {value!r}")
    return float(value)
  if hint is str:
    if not isinstance(value, str):
      raise ConfigError(f"config key {key!r}: expected a string, got {value!r}")
    return value
  return value


def _build(cls, values: Mapping[str, Any], prefix: str):
  if not isinstance(values, Mapping):
    raise ConfigError(f"config key {prefix.rstrip('.') or '<root>'!r}: expected a mapping, "
                      f"got {values!r}")
  hints = typing.get_type_hints(cls)
  fields = {f.name: f for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - set(fields))
  if unknown:
    raise ConfigError(f"unknown config key(s) {[prefix + k for k in unknown]}; valid keys under "
                      f"{prefix.rstrip('.') or 'the root'}: {sorted(fields)}")
  kwargs = {}
  for name, value in values.items():
    key, hint = prefix + name, hints[name]
    if dataclasses.is_dataclass(hint):
      kwargs[name] = _build(hint, value, key + ".")
    else:
      kwargs[name] = _check_type(value, hint, key)
      if key in _CHOICES and kwargs[name] not in _CHOICES[key]:
        raise ConfigError(f"config key {key!r}: expected one of {_CHOICES[key]}, got {value!r}")
  try:
    return cls(**kwargs)
  except ValueError as e:  # a dataclass's own validation (e.g. OptimConfig)
    raise ConfigError(f"config {prefix.rstrip('.') or 'root'}: {e}") from e


def config_to_dict(config: RunConfig) -> dict[str, Any]:
  return json.loads(json.dumps(dataclasses.asdict(config)))


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
  """Recursive dict merge; `model_options` merges too."""
  out = dict(base)
  for k, v in update.items():
    out[k] = merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
  return out


def parse_override(item: str) -> dict[str, Any]:
  """'train.epochs=5' -> {'train': {'epochs': 5}} (the value is parsed as YAML)."""
  if "=" not in item:
    raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.epochs=5")
  key, raw = item.split("=", 1)
  try:
    value = yaml.safe_load(raw) if raw.strip() else None
  except yaml.YAMLError as e:
    raise ConfigError(f"--set {item!r}: cannot parse the value: {e}") from e
  if isinstance(value, str):  # YAML 1.1 reads '2e-4' as a string
    try:
      value = float(value)
    except ValueError:
      pass
  out: dict[str, Any] = value
  for part in reversed(key.strip().split(".")):
    if not part:
      raise ConfigError(f"--set {item!r}: empty key segment")
    out = {part: out}
  return out


def read_config_file(path: str | pathlib.Path) -> dict[str, Any]:
  path = pathlib.Path(path)
  if not path.is_file():
    raise ConfigError(f"config file {path} does not exist")
  try:
    values = yaml.safe_load(path.read_text()) or {}
  except yaml.YAMLError as e:
    raise ConfigError(f"config file {path}: not valid YAML/JSON: {e}") from e
  if not isinstance(values, Mapping):
    raise ConfigError(f"config file {path}: expected a mapping at the top level")
  return dict(values)


def make_config(*layers: Mapping[str, Any], overrides: Sequence[str] = ()) -> RunConfig:
  """Merges layers (later wins) and `key=value` overrides into a validated RunConfig."""
  values: dict[str, Any] = {}
  for layer in layers:
    values = merge(values, layer)
  for item in overrides:
    values = merge(values, parse_override(item))
  return _build(RunConfig, values, "")


def config_from_dict(values: Mapping[str, Any]) -> RunConfig:
  return _build(RunConfig, values, "")


def config_difference(stored: Any, current: Any, key: str = "") -> str:
  """The first differing dotted key of two config dicts, as 'key: stored X, now Y' ('' if equal)."""
  if isinstance(stored, Mapping) and isinstance(current, Mapping):
    for k in sorted(set(stored) | set(current)):
      found = config_difference(stored.get(k), current.get(k), f"{key}{k}.")
      if found:
        return found
    return ""
  return "" if stored == current else f"{key.rstrip('.')}: stored {stored!r}, now {current!r}"
