"""The tiny cohort, model and run config that the training tests share.

One shape everywhere: a jitted program depends on the grid, dims, batch size and epoch count (the
cosine schedule is a constant of the train step), so tests that train with these values compile
byte-identical programs, which the persistent compilation cache (conftest.py) then serves.
"""

from __future__ import annotations

import json
import pathlib

import yaml

TINY_COHORT = {
  "layout": "synthetic",
  "n_patients": 60,
  "grid_side": 8,
  "feature_dim": 16,
  "n_genes_tumour": 6,
  "n_genes_micro": 8,
}
TINY_MODEL = {"dim": 16, "heads": 2, "dim_head": 8, "offset_groups": 2, "cpb_hidden": 8, "snn_widths": [8, 8, 8, 16]}
TINY_EPOCHS = 3  # the session's trained run (conftest.tiny_run); a run of another length compiles again


def write_spec(path: pathlib.Path, **overrides) -> pathlib.Path:
  """Writes the tiny cohort spec (with `overrides`) as YAML to `path`; returns `path`."""
  path.write_text(yaml.safe_dump({**TINY_COHORT, **overrides}))
  return path


def tiny_layer(spec, data_dir, task: str = "grading", **train) -> dict:
  """The config layer of a tiny run; `train` overrides keys of the `train` section."""
  return {
    "task": task,
    "model_options": TINY_MODEL,
    "data": {"data": str(spec), "data_dir": str(data_dir)},
    "train": {"epochs": TINY_EPOCHS, "batch_size": 8, "eval_batch_size": 8, "progress": False, **train},
  }


def tiny_config(spec, data_dir, task: str = "grading", **train):
  """`make_config` of `tiny_layer`."""
  from smml_jax.train.config import make_config

  return make_config(tiny_layer(spec, data_dir, task, **train))


def cli_args(spec, out, data_dir, *extra, task: str = "grading", epochs: int = 1) -> list[str]:
  """`experiments.run` arguments of a tiny run: the spec, the records folder, TINY_MODEL, `extra`."""
  args = [
    "--task",
    task,
    "--data",
    str(spec),
    "--data-dir",
    str(data_dir),
    "--epochs",
    str(epochs),
    "--out",
    str(out),
    "--no-progress",
    *extra,
  ]
  for key, value in TINY_MODEL.items():
    args += ["--set", f"model_options.{key}={json.dumps(value)}"]
  return args
