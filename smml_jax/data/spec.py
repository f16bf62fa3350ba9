"""Cohort specs: `load_cohort('synthetic' | path/to/spec.yaml|json, data_dir) -> Cohort`.

A spec is a mapping with `layout` (synthetic | original | clam | trident) and that layout's fields.
Relative paths are taken from `root` (itself relative to the spec file's folder), else from the
spec file's folder. Building is cached: the records live under
`<data_dir>/smml_cohort/<layout>_<hash of the spec>/`, so the same spec reuses them and a changed
one rebuilds. `data_dir` defaults to $SMML_DATA_DIR or ~/.cache/smml_jax/tfds.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Mapping

import yaml

from smml_jax.data import cohort as cohort_lib
from smml_jax.data.clam_layout import ClamSource
from smml_jax.data.errors import CohortError
from smml_jax.data.original_layout import OriginalSource
from smml_jax.data.spec_fields import validate_spec
from smml_jax.data.synthetic import SyntheticConfig, SyntheticSource


def read_spec(path: str | os.PathLike) -> dict[str, Any]:
  path = pathlib.Path(path)
  if not path.is_file():
    raise CohortError(f"cohort spec {path} does not exist (use 'synthetic' or a YAML/JSON spec)")
  text = path.read_text()
  try:
    spec = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
  except (json.JSONDecodeError, yaml.YAMLError) as e:
    raise CohortError(f"cohort spec {path} is not valid {path.suffix.lstrip('.')}: {e}") from e
  if not isinstance(spec, dict):
    raise CohortError(f"cohort spec {path}: expected a mapping at the top level")
  return spec


def check_spec_file(path: str | os.PathLike) -> None:
  """Reads a spec file and checks its keys and values (no input file is opened)."""
  path = pathlib.Path(path).resolve()
  validate_spec(read_spec(path), f"cohort spec {path}")


def source_from_spec(spec: Mapping[str, Any], base: pathlib.Path, where: str = "cohort spec"):
  """The CohortSource a spec describes; `base` resolves relative paths.

  Every key and value is checked first (spec_fields.py), so nothing is read or written for a
  spec with a typo.
  """
  validate_spec(spec, where)
  layout = spec["layout"]
  if layout == "synthetic":
    return SyntheticSource(SyntheticConfig(**{k: v for k, v in spec.items() if k != "layout"}))
  root = pathlib.Path(os.path.expanduser(str(spec.get("root", "."))))
  root = (root if root.is_absolute() else base / root).resolve()
  body = {k: v for k, v in spec.items() if k not in ("layout", "root")}
  if layout == "original":
    return OriginalSource(body, root)
  return ClamSource(body, root, layout)


def load_cohort(
  data: str | os.PathLike | Mapping[str, Any] = "synthetic", data_dir: str | os.PathLike | None = None
) -> cohort_lib.Cohort:
  """'synthetic' (the default cohort), a spec file path, or a spec mapping -> built Cohort."""
  if isinstance(data, Mapping):
    source = source_from_spec(data, pathlib.Path.cwd())
  elif str(data) == "synthetic":
    source = SyntheticSource()
  else:
    path = pathlib.Path(data).resolve()
    source = source_from_spec(read_spec(path), path.parent, f"cohort spec {path}")
  return cohort_lib.build_cohort(source, data_dir)
