"""Config layers: reading a YAML/JSON file (with `extends:`), `--set key=value` overrides and the
recursive merge of layers; `ConfigError`, the error every config check raises."""

from __future__ import annotations

import pathlib
from typing import Any, Mapping

import yaml


class ConfigError(ValueError):
  """A configuration value or key that does not fit."""


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


def read_config_file(path: str | pathlib.Path, _chain: tuple[pathlib.Path, ...] = ()) -> dict[str, Any]:
  """A YAML/JSON config layer. `extends: FILE` (relative to this file's folder) names a config this
  one is a difference from: FILE is read first (recursively) and this file merged over it."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise ConfigError(f"config file {path} does not exist")
  try:
    values = yaml.safe_load(path.read_text()) or {}
  except yaml.YAMLError as e:
    raise ConfigError(f"config file {path}: not valid YAML/JSON: {e}") from e
  if not isinstance(values, Mapping):
    raise ConfigError(f"config file {path}: expected a mapping at the top level")
  values = dict(values)
  if "extends" not in values:
    return values
  base = values.pop("extends")
  if not isinstance(base, str) or not base:
    raise ConfigError(f"config file {path}, key 'extends': expected a file name, got {base!r}")
  chain = (*_chain, path.resolve())
  base_path = (path.parent / base).resolve()
  if base_path in chain:
    raise ConfigError(
      f"config file {path}, key 'extends': {base} makes a cycle ({' -> '.join(p.name for p in (*chain, base_path))})"
    )
  if not base_path.is_file():
    raise ConfigError(f"config file {path}, key 'extends': {base_path} does not exist")
  return merge(read_config_file(base_path, chain), values)
