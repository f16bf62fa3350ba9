"""Name -> baseline module, and a builder that fills in the data's sizes."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn

from smml_jax.models.baselines.abmil import ABMIL
from smml_jax.models.baselines.concat import ConcatFusion
from smml_jax.models.baselines.mcat import MCAT
from smml_jax.models.baselines.pathomic import PathomicFusion
from smml_jax.models.baselines.snn_only import SNNBaseline

BASELINES: dict[str, type[nn.Module]] = {
  "abmil": ABMIL,
  "snn": SNNBaseline,
  "concat": ConcatFusion,
  "pathomic": PathomicFusion,
  "mcat": MCAT,
}

# Flax's own dataclass fields, not configuration.
_NOT_CONFIG = frozenset({"parent", "name"})


def config_fields(cls: type[nn.Module]) -> tuple[str, ...]:
  """The configuration attributes of a baseline class."""
  return tuple(f.name for f in dataclasses.fields(cls) if f.name not in _NOT_CONFIG)


def build_baseline(
  name: str, *, num_classes: int, n_genes_tumour: int, n_genes_micro: int, feature_dim: int, **overrides: Any
) -> nn.Module:
  """Builds baseline `name` for the data's sizes; `overrides` set any other attribute.

  The sizes a model reads are stored on it and checked against every batch; the ones it does
  not read (genes for ABMIL, patches for the SNN) are dropped.
  """
  if name not in BASELINES:
    raise ValueError(f"unknown baseline {name!r}; valid names: {sorted(BASELINES)}")
  cls = BASELINES[name]
  fields = config_fields(cls)
  unknown = sorted(set(overrides) - set(fields))
  if unknown:
    raise ValueError(f"baseline {name!r} ({cls.__name__}) has no attribute(s) {unknown}; valid: {sorted(fields)}")
  sizes = {
    "num_classes": num_classes,
    "n_genes_tumour": n_genes_tumour,
    "n_genes_micro": n_genes_micro,
    "feature_dim": feature_dim,
  }
  for key, value in sizes.items():
    if key in overrides:
      raise ValueError(f"baseline {name!r}: pass {key} as its keyword argument, not as an override")
    if key == "num_classes" and value < 1:
      raise ValueError(f"baseline {name!r}: num_classes must be >= 1, got {value}")
  kwargs = {k: v for k, v in sizes.items() if k in fields}
  kwargs.update(overrides)
  return cls(**kwargs)
