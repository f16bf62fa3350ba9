"""Configs stored by older versions, read as today's: keys that moved, were removed or were added.

`move_impl_keys`: `model_options.attention_impl` / `query_tile` / `tile_pairs` / `sampler` moved to
the `impl` section; `drop_removed_keys`: `optim.epochs` (it never took effect) is dropped;
`add_new_keys`: keys added later take the value every run stored before them trained with.
"""

from __future__ import annotations

from typing import Any, Mapping

from smml_jax.train.config_layers import ConfigError

# model_options keys of older configs that are implementation knobs now: old key -> impl field.
_MOVED_TO_IMPL = {
  "attention_impl": "attention",
  "query_tile": "query_tile",
  "tile_pairs": "tile_pairs",
  "sampler": "sampler",
}


def move_impl_keys(values: Mapping[str, Any]) -> dict[str, Any]:
  """Older configs' `model_options.attention_impl` / `query_tile` / `tile_pairs` / `sampler` ->
  the `impl` section (a conflicting value in both places is an error naming both keys)."""
  values = dict(values)
  options = values.get("model_options")
  if not isinstance(options, Mapping) or not set(options) & set(_MOVED_TO_IMPL):
    return values
  if not isinstance(values.get("impl") or {}, Mapping):
    return values  # config._build names the bad `impl` value
  impl = dict(values.get("impl") or {})
  options = dict(options)
  for old, new in _MOVED_TO_IMPL.items():
    if old not in options:
      continue
    value = options.pop(old)
    if new in impl and impl[new] != value:
      raise ConfigError(
        f"config keys 'model_options.{old}' ({value!r}) and 'impl.{new}' "
        f"({impl[new]!r}) disagree; 'model_options.{old}' is the older name of "
        f"'impl.{new}': set only 'impl.{new}'"
      )
    impl[new] = value
  values["model_options"], values["impl"] = options, impl
  return values


def drop_removed_keys(values: Mapping[str, Any]) -> dict[str, Any]:
  """Runs written before `optim.epochs` was removed store it with a value that never took effect
  (the loop always used train.epochs): dropped when a stored config is read or compared."""
  values = dict(values)
  if isinstance(values.get("optim"), Mapping):
    values["optim"] = {k: v for k, v in values["optim"].items() if k != "epochs"}
  return values


# Keys added later, with the value every run stored before them trained with.
_ADDED = {("data", "drop_expression"): 0.0, ("train", "coordination_score"): "auto"}


def add_new_keys(values: Mapping[str, Any]) -> dict[str, Any]:
  """Each key of `_ADDED` absent from its (present) section, at its value."""
  values = dict(values)
  for (section, key), default in _ADDED.items():
    if isinstance(values.get(section), Mapping) and key not in values[section]:
      values[section] = {**values[section], key: default}
  return values
