"""A trained run ready for inference: its stored config, preprocessing, model and params.

A run directory (written by `smml_jax.train.loop.train`, laid out by `smml_jax.train.run_dir`)
carries everything needed: `config.json` (model and options), `preprocessor.json` (gene transform,
training-split normalisation statistics, survival cut points), `cohort.json` (grid side, feature
dimension, gene names per subspace in model order, split slide ids, and the cohort spec that says
how slides were read: grid layout, HDF5 dataset names) and `checkpoints/{best,latest}` (orbax, read
through `smml_jax.train.checkpoints`).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp

from smml_jax.data import missing
from smml_jax.data.normalise import SUBSPACES, Preprocessor
from smml_jax.evaluate.errors import InferenceError
from smml_jax.models.registry import ModelSpec, build_model
from smml_jax.tasks import Task, get_task
from smml_jax.train import checkpoints as checkpoints_lib
from smml_jax.train import run_dir as run_dir_lib
from smml_jax.train.config import RunConfig

CHECKPOINTS = checkpoints_lib.KINDS
# How each cohort layout reads a slide's HDF5 file unless its spec says otherwise.
LAYOUT_DEFAULTS = {
  "original": {"grid_layout": "sample", "feature_dataset": "Res_feature", "coords_dataset": None},
  "clam": {"grid_layout": "sample", "feature_dataset": "features", "coords_dataset": "coords"},
  "synthetic": {"grid_layout": "sample", "feature_dataset": None, "coords_dataset": None},
}


@dataclasses.dataclass(frozen=True)
class SlideFormat:
  """How the run's training cohort turned an HDF5 bag into a grid (see `smml_jax.data.bags`)."""

  grid_layout: str = "sample"
  feature_dataset: Optional[str] = None  # None: auto-detect `Res_feature` / `features`
  coords_dataset: Optional[str] = "coords"


@dataclasses.dataclass(frozen=True)
class TrainedRun:
  """A trained run ready for inference.

  Attributes:
    run_dir: the run directory.
    config: its RunConfig.
    preprocessor: gene normalisation and survival cut points fitted on its training split.
    gene_names: {'tumour': [...], 'micro': [...]} the model's gene inputs, in order.
    grid_side, feature_dim: patches are (grid_side ** 2, feature_dim).
    splits: {'train'|'val'|'test': [slide ids]}.
    slide_format: how slides were read from HDF5 files.
    spec: the built model.
    params: restored parameters.
    checkpoint: 'best' or 'latest'; epoch: the checkpoint's epoch (0-based).
    cohort_path: the training cohort's record directory (as written at training time).
  """

  run_dir: pathlib.Path
  config: RunConfig
  preprocessor: Preprocessor
  gene_names: dict[str, list[str]]
  grid_side: int
  feature_dim: int
  splits: dict[str, list[str]]
  slide_format: SlideFormat
  spec: ModelSpec
  params: Any
  checkpoint: str
  epoch: int
  cohort_path: str

  @property
  def task(self) -> str:
    return self.config.task

  @property
  def task_spec(self) -> Task:
    return get_task(self.config.task, self.config.num_classes)

  @property
  def num_classes(self) -> int:
    return self.config.num_classes

  @property
  def class_names(self) -> tuple[str, ...]:
    return self.task_spec.class_names


def slide_format_of(cohort_record: Mapping[str, Any], config: RunConfig) -> SlideFormat:
  """The slide reading options of the training cohort (cohort.json's `spec`, else config's spec)."""
  spec = cohort_record.get("spec")
  if spec is None:  # a run directory written before cohort.json carried the spec
    data = str(config.data.data)
    spec = {"layout": "synthetic"}
    if data != "synthetic" and pathlib.Path(data).is_file():
      from smml_jax.data.spec import read_spec

      spec = read_spec(data)
  layout = spec.get("layout", "synthetic")
  defaults = LAYOUT_DEFAULTS.get(layout, LAYOUT_DEFAULTS["clam"])
  return SlideFormat(**{k: spec.get(k, v) for k, v in defaults.items()})


def model_template(
  spec: ModelSpec, grid_side: int, feature_dim: int, n_genes: Mapping[str, int], learned_absence: bool = False
):
  """Abstract params (ShapeDtypeStructs) of `spec.module` for one slide of the given shapes
  (`learned_absence`: with the absent gene embeddings of a run trained with missing expression)."""
  dummy = {
    "patches": jnp.zeros((1, grid_side * grid_side, feature_dim), jnp.float32),
    "genes_tumour": jnp.zeros((1, n_genes["tumour"]), jnp.float32),
    "genes_micro": jnp.zeros((1, n_genes["micro"]), jnp.float32),
  }
  if learned_absence:
    dummy["has_expression"] = jnp.ones((1,), bool)
  key = jax.random.PRNGKey(0)
  variables = jax.eval_shape(lambda: spec.module.init({"params": key, "dropout": key}, dummy))
  return variables["params"]


def restore_params(checkpoint_dir: str | pathlib.Path, params_template: Any, which: str = "best") -> tuple[Any, dict]:
  """Only the params of a run's `which` checkpoint (`smml_jax.train.checkpoints.restore_params`).

  Args:
    checkpoint_dir: the run's `checkpoints/` folder.
    params_template: params pytree or its abstract shapes (`model_template`).
    which: 'best' or 'latest'.

  Returns:
    (params as jax arrays, the checkpoint's JSON meta); InferenceError names what is wrong.
  """
  try:
    return checkpoints_lib.restore_params(checkpoint_dir, which, params_template)
  except checkpoints_lib.CheckpointError as e:
    raise InferenceError(str(e)) from e


def resolve_run_dir(path: str | pathlib.Path) -> tuple[pathlib.Path, str]:
  """A run directory or one of its checkpoint folders -> (run directory, 'best'|'latest').

  Accepts DIR, DIR/checkpoints, DIR/checkpoints/best|latest and DIR/checkpoints/best|latest/<step>.
  """
  try:
    found, kind = run_dir_lib.locate(path, CHECKPOINTS)
  except run_dir_lib.RunDirError as e:
    raise InferenceError(str(e)) from e
  return found, kind or "best"


def load_run(run_dir: str | pathlib.Path, checkpoint: str = "best") -> TrainedRun:
  """Reads a run directory (`smml_jax.train.run_dir.load`) and restores its params from
  `checkpoints/<checkpoint>`."""
  try:
    stored = run_dir_lib.load(run_dir)
  except run_dir_lib.RunDirError as e:
    raise InferenceError(f"{run_dir} is not a usable training run directory: {e}") from e
  config, record = stored.config, stored.cohort
  preprocessor = Preprocessor.from_json(json.dumps(stored.preprocessor))
  gene_names = {s: list(record["gene_names"][s]) for s in SUBSPACES}
  spec = build_model(
    config.model,
    num_classes=config.num_classes,
    n_genes_tumour=len(gene_names["tumour"]),
    n_genes_micro=len(gene_names["micro"]),
    feature_dim=int(record["feature_dim"]),
    options=config.model_options,
    impl=config.impl.model_options(),
    compute_dtype=config.train.compute_dtype,
  )
  template = model_template(
    spec,
    int(record["grid_side"]),
    int(record["feature_dim"]),
    {s: len(v) for s, v in gene_names.items()},
    learned_absence=missing.learned_absence(record),
  )
  params, meta = restore_params(stored.checkpoints, template, checkpoint)
  return TrainedRun(
    run_dir=stored.path,
    config=config,
    preprocessor=preprocessor,
    gene_names=gene_names,
    grid_side=int(record["grid_side"]),
    feature_dim=int(record["feature_dim"]),
    splits=record.get("splits", {}),
    slide_format=slide_format_of(record, config),
    spec=spec,
    params=params,
    checkpoint=checkpoint,
    epoch=int(meta.get("epoch", -1)),
    cohort_path=str(record.get("path", "")),
  )
