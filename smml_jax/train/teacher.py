"""The teacher of a distilled run: a finished `subspace` run of the SAME split, checked and loaded.

A teacher that saw any of the student's validation or test patients would leak them into the
student, so its stored split (protocol, fold, seeds, cohort) and its stored training slide ids
must be the student's; its grid, features, genes and fitted preprocessing must be too. Every
refusal is a `TeacherError` naming both runs' values, raised before the student's run directory
is touched.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from smml_jax.models.registry import build_model
from smml_jax.ops import dispatch
from smml_jax.train import run_dir as run_dir_lib, sharding
from smml_jax.train.checkpoints import CheckpointError, restore_params
from smml_jax.train.config import ConfigError, RunConfig
from smml_jax.train.steps import Distillation

TEACHER_MODELS = ("subspace",)
# The data keys that decide which patients are in which split.
SPLIT_KEYS = (
  "data",
  "split",
  "fold",
  "n_folds",
  "split_seed",
  "split_file",
  "val_fraction",
  "test_fraction",
  "stratify",
)


class TeacherError(ConfigError):
  """A teacher run that cannot teach this student (another split, model, cohort or shape)."""


@dataclasses.dataclass(frozen=True)
class Teacher:
  """A loaded teacher: run directory, module (eval mode in the train step) and best params."""

  run_dir: pathlib.Path
  module: nn.Module
  params: Any
  epoch: int


def _split_text(config: RunConfig) -> str:
  d = config.data
  return ", ".join(f"{k} {getattr(d, k)!r}" for k in SPLIT_KEYS)


def check_teacher(
  stored: run_dir_lib.StoredRun,
  config: RunConfig,
  splits: Mapping[str, list[str]],
  cohort: Mapping[str, Any],
  preprocessor: Mapping[str, Any],
) -> None:
  """TeacherError unless the stored run can teach a student with this config and split.

  Args:
    stored: the teacher's records (`run_dir.load`).
    config: the student's resolved config (paths absolute, as stored).
    splits: the student's {'train'|'val'|'test': slide ids}.
    cohort: the student's cohort shapes: grid_side, feature_dim, gene_names.
    preprocessor: the student's fitted preprocessing (preprocessor.json's object).
  """
  where = f"distill.teacher {stored.path}"
  t = stored.config
  if t.model not in TEACHER_MODELS:
    raise TeacherError(
      f"{where}: the teacher is a {t.model!r} run; a student learns from a {' or '.join(map(repr, TEACHER_MODELS))} run"
    )
  if t.task != config.task:
    raise TeacherError(f"{where}: the teacher was trained for task {t.task!r}, the student is for task {config.task!r}")
  t_data = run_dir_lib.absolute_paths(t).data
  s_data = run_dir_lib.absolute_paths(config).data
  if any(getattr(t_data, k) != getattr(s_data, k) for k in SPLIT_KEYS):
    raise TeacherError(
      f"{where} was trained on another split than the student: teacher "
      f"({_split_text(t)}); student ({_split_text(config)}). The teacher must "
      "have been trained on the student's training patients only: use the "
      "subspace run of the same fold and split seed"
    )
  theirs = stored.cohort.get("splits", {})
  for part in ("train", "val", "test"):
    a, b = set(theirs.get(part, ())), set(splits.get(part, ()))
    if a != b:
      raise TeacherError(
        f"{where}: its stored {part!r} split differs from the student's "
        f"({len(a - b)} slide(s) only the teacher's, e.g. {sorted(a - b)[:3]}; "
        f"{len(b - a)} only the student's, e.g. {sorted(b - a)[:3]}): the "
        "teacher must have been trained on the same split's training patients"
      )
  for key in ("grid_side", "feature_dim", "gene_names"):
    if stored.cohort.get(key) != cohort.get(key):
      shown = lambda v, k=key: {s: len(g) for s, g in v.items()} if k == "gene_names" and v else v
      raise TeacherError(
        f"{where}: {key} {shown(stored.cohort.get(key))} (teacher) differs "
        f"from the student's cohort {shown(cohort.get(key))}"
      )
  if json.loads(json.dumps(stored.preprocessor)) != json.loads(json.dumps(preprocessor)):
    record = stored.path / run_dir_lib.PREPROCESSOR_FILE
    raise TeacherError(
      f"{where}: its fitted gene preprocessing ({record}) differs from the "
      "student's (data.gene_transform / gene_clip / survival_cuts must be the "
      "same)"
    )
  if not run_dir_lib.is_finished(stored.path):
    raise TeacherError(f"{where} has not finished training (no {run_dir_lib.SUMMARY_FILE}): finish it first")


def restore_best_params(run_path: pathlib.Path, template: Any) -> tuple[Any, int]:
  """(params, epoch) of the run's `checkpoints/best`, verified against its manifest
  (`checkpoints.restore_params`, the one reader of a run's params)."""
  try:
    params, meta = restore_params(run_path / run_dir_lib.CHECKPOINTS_DIR, "best", template)
  except CheckpointError as e:
    raise TeacherError(f"distill.teacher {run_path}: {e}") from e
  return params, int(meta.get("epoch", -1))


def load_teacher(
  config: RunConfig,
  *,
  splits: Mapping[str, list[str]],
  cohort: Mapping[str, Any],
  preprocessor: Mapping[str, Any],
  student_module: nn.Module,
  impl: Optional[Mapping[str, Any]] = None,
) -> Optional[Teacher]:
  """The checked, restored teacher of `config.distill.teacher`, or None without one.

  `impl`: the student's implementation knobs (the teacher runs on the same platform).
  """
  path = config.distill.teacher
  if not path:
    return None
  try:
    stored = run_dir_lib.load(path)
  except run_dir_lib.RunDirError as e:
    raise TeacherError(f"distill.teacher: {e}") from e
  check_teacher(stored, config, splits, cohort, preprocessor)
  t = stored.config
  genes = cohort["gene_names"]
  spec = build_model(
    t.model,
    num_classes=t.num_classes,
    n_genes_tumour=len(genes["tumour"]),
    n_genes_micro=len(genes["micro"]),
    feature_dim=int(cohort["feature_dim"]),
    options=t.model_options,
    impl=impl,
    compute_dtype=t.train.compute_dtype,  # the teacher runs as it was trained
  )
  t_dim, s_dim = spec.module.config.branch.dim, student_module.config.branch.dim
  if t_dim != s_dim:
    raise TeacherError(
      f"distill.teacher {stored.path}: its embeddings are {t_dim}-d, the "
      f"student's {s_dim}-d (model_options.dim must match for feature matching)"
    )
  side, dim = int(cohort["grid_side"]), int(cohort["feature_dim"])
  dummy = {
    "patches": jnp.zeros((1, side * side, dim), jnp.float32),
    "genes_tumour": jnp.zeros((1, len(genes["tumour"])), jnp.float32),
    "genes_micro": jnp.zeros((1, len(genes["micro"])), jnp.float32),
  }
  key = jax.random.PRNGKey(0)
  template = jax.eval_shape(lambda: spec.module.init({"params": key, "dropout": key}, dummy))
  params, epoch = restore_best_params(stored.path, template["params"])
  if not all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(params)):
    raise TeacherError(f"distill.teacher {stored.path}: its best checkpoint holds NaN/inf")
  return Teacher(run_dir=stored.path, module=spec.module, params=params, epoch=epoch)


def distillation(config: RunConfig) -> Optional[Distillation]:
  """The loss weights of `config.distill` when the run has a teacher, else None."""
  d = config.distill
  if not d.teacher:
    return None
  return Distillation(temperature=d.temperature, kd_weight=d.kd_weight, feature_weight=d.feature_weight)


def for_experiment(exp: Any, cohort_record: Mapping[str, Any]) -> Optional[Teacher]:
  """`load_teacher` for a built `loop.Experiment` (its split, cohort and preprocessing);
  the params are replicated over the experiment's mesh."""
  config = exp.config
  if not config.distill.teacher:
    return None
  impl = dict(config.impl.model_options(), platform=dispatch.platform_of(exp.mesh))
  teacher = load_teacher(
    run_dir_lib.absolute_paths(config),
    splits=cohort_record["splits"],
    cohort=cohort_record,
    preprocessor=json.loads(exp.preprocessor.to_json()),
    student_module=exp.spec.module,
    impl=impl,
  )
  return dataclasses.replace(teacher, params=sharding.replicate(teacher.params, exp.mesh))
