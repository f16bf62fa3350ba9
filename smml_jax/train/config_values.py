"""Checks of one config value: against its type hint (converting lists to tuples, ints to floats
where a float is declared) and against its range; each raises ConfigError naming the dotted key."""

from __future__ import annotations

import collections.abc
import math
import typing
from typing import Any, Mapping

from smml_jax.train.config_layers import ConfigError


def check_type(value: Any, hint: Any, key: str) -> Any:
  origin = typing.get_origin(hint)
  if hint is Any or origin in (Mapping, dict) or hint in (dict,):
    if origin in (Mapping, dict) and not isinstance(value, Mapping):
      raise ConfigError(f"config key {key!r}: expected a mapping, got {value!r}")
    return dict(value) if isinstance(value, Mapping) else value
  if origin is typing.Union:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if value is None:
      return None
    return check_type(value, args[0], key)
  if origin is typing.Literal:
    if value not in typing.get_args(hint):
      raise ConfigError(f"config key {key!r}: expected one of {typing.get_args(hint)}, got {value!r}")
    return value
  if origin in (collections.abc.Sequence, tuple, list):
    if not isinstance(value, (list, tuple)):
      raise ConfigError(f"config key {key!r}: expected a list, got {value!r}")
    item = (typing.get_args(hint) or (Any,))[0]
    return tuple(check_type(v, item, f"{key}[{i}]") for i, v in enumerate(value))
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


def check_range(value: Any, bounds: Mapping[str, float], key: str) -> None:
  """`bounds` ('min' >=, 'above' >, 'below' <) hold for a number, or for each item of a list."""
  for i, v in enumerate(value if isinstance(value, tuple) else (value,)):
    if v is None:
      continue
    ok = math.isfinite(v) and all(
      test(v, bounds[name])
      for name, test in (("min", lambda a, b: a >= b), ("above", lambda a, b: a > b), ("below", lambda a, b: a < b))
      if name in bounds
    )
    if not ok:
      expected = (
        "a positive number"
        if dict(bounds) == {"above": 0}
        else "a number "
        + " and ".join(
          f"{op} {bounds[name]}" for name, op in (("min", ">="), ("above", ">"), ("below", "<")) if name in bounds
        )
      )
      where = f"{key}[{i}]" if isinstance(value, tuple) else key
      raise ConfigError(f"config key {where!r}: expected {expected}, got {v!r}")
