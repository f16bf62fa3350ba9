"""The run directory: its file names, what is written when, and how a run is read back.

One training run owns one folder (`--out`):

  smml_run.json           marker: this folder is a run directory of this project (written first)
  config.json             the resolved RunConfig (paths absolute), written once the run starts
  preprocessor.json       gene normalisation and survival cut points fitted on the training split
  cohort.json             grid side, feature dimension, gene names, split slide ids, cohort spec
  metrics.jsonl           one line per evaluation (rewritten after every evaluation)
  predictions_{val,test}.jsonl   per-slide outputs at the best epoch so far
  checkpoints/            orbax checkpoints: latest/<epoch> (the last N) and best/<epoch>
  summary.json            written last, when the run completes
  compare_cell.json       written by experiments.compare (wall time of the cell)
  report/, predictions/   written by experiments.report and experiments.predict

Nothing is written before every input has been validated (`check` is read-only; the loop calls
`prepare` only after the config, the cohort and the model were built). `--overwrite` removes only
the entries above (`RUN_ENTRIES`), never other files, and only in a folder that `is_run_dir`
recognises; `--resume` needs the stored config to equal the current one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
from typing import Any, Mapping, Optional

from smml_jax.train.config import (
  ConfigError,
  RunConfig,
  config_difference,
  config_from_dict,
  config_to_dict,
  run_identity,
)

MARKER_FILE = "smml_run.json"
CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor.json"
COHORT_FILE = "cohort.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINTS_DIR = "checkpoints"
CELL_FILE = "compare_cell.json"
REPORT_DIR = "report"
PREDICT_DIR = "predictions"
PREDICTION_SPLITS = ("val", "test")
MARKER = {"format": "smml-jax run directory", "version": 1}


def predictions_file(split: str) -> str:
  """'predictions_<split>.jsonl': per-slide outputs at the best epoch."""
  return f"predictions_{split}.jsonl"


EVENTS_DIR, LOG_FILE = "events", "train.log"  # TensorBoard event files, the run's log

# Everything a run (and the tools working on it) writes: what --overwrite may remove.
RUN_ENTRIES = (
  MARKER_FILE,
  CONFIG_FILE,
  PREPROCESSOR_FILE,
  COHORT_FILE,
  METRICS_FILE,
  SUMMARY_FILE,
  EVENTS_DIR,
  LOG_FILE,
  CHECKPOINTS_DIR,
  CELL_FILE,
  REPORT_DIR,
  PREDICT_DIR,
  *(predictions_file(s) for s in PREDICTION_SPLITS),
)

NEW, RESUME, REPLACE = "new", "resume", "replace"


class RunDirError(ValueError):
  """A run directory that cannot be used as asked (another run, a foreign folder, bad records)."""


# ----------------------------------------------------------------------------- identity


def absolute_paths(config: RunConfig) -> RunConfig:
  """The config with its file paths (cohort spec, record dir, split file) made absolute.

  A run stores these so that predict / report work from any working directory.
  """
  d = config.data
  absolute = lambda p: None if p is None else str(pathlib.Path(os.path.expanduser(p)).resolve())
  data = d.data if str(d.data) == "synthetic" else absolute(d.data)
  return dataclasses.replace(
    config,
    data=dataclasses.replace(d, data=data, data_dir=absolute(d.data_dir), split_file=absolute(d.split_file)),
    distill=dataclasses.replace(config.distill, teacher=absolute(config.distill.teacher)),
  )


def _read_json_or_none(path: pathlib.Path) -> Any:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None


def _is_run_config(values: Any) -> bool:
  """A complete stored RunConfig (not merely any JSON file called config.json)."""
  if not isinstance(values, Mapping):
    return False
  try:
    return config_to_dict(config_from_dict(values)) == values
  except ConfigError:
    return False


def is_run_dir(path: str | pathlib.Path) -> bool:
  """Whether `path` is a run directory of this project.

  Either it holds the marker, or (runs written before the marker existed) a complete stored
  RunConfig beside a checkpoints/ folder.
  """
  path = pathlib.Path(path)
  if _read_json_or_none(path / MARKER_FILE) == MARKER:
    return True
  return (path / CHECKPOINTS_DIR).is_dir() and _is_run_config(_read_json_or_none(path / CONFIG_FILE))


def stored_config(path: str | pathlib.Path) -> Optional[dict[str, Any]]:
  """The run's stored config dict, or None when it has none yet."""
  config_path = pathlib.Path(path) / CONFIG_FILE
  if not config_path.exists():
    return None
  values = _read_json_or_none(config_path)
  if not isinstance(values, Mapping):
    raise RunDirError(f"{config_path}: not a JSON object (a damaged run record)")
  return dict(values)


def config_mismatch(path: str | pathlib.Path, config: RunConfig) -> str:
  """'' if the run in `path` has no stored config or the same one; else the first difference."""
  stored = stored_config(path)
  if stored is None:
    return ""
  stored = run_identity(stored)  # implementation knobs (`impl`) may change between runs
  current = run_identity(config_to_dict(absolute_paths(config)))
  if stored == current:
    return ""
  return config_difference(stored, current) or "the stored config differs"


# ----------------------------------------------------------------------------- starting a run


def check(out_dir: str | pathlib.Path, config: RunConfig, *, resume: bool, overwrite: bool) -> str:
  """Decides, without writing anything, what starting a run in `out_dir` means.

  Returns NEW (absent or empty folder, or --resume with no run to continue), RESUME or REPLACE.
  Raises RunDirError for a folder that holds another run (without --overwrite), a different
  config under --resume, or a non-empty folder that is not a run directory of this project.
  """
  out_dir = pathlib.Path(out_dir)
  if resume and overwrite:
    raise RunDirError("--resume and --overwrite exclude each other")
  if not out_dir.exists():
    return NEW
  if not out_dir.is_dir():
    raise RunDirError(f"--out {out_dir} is a file, not a folder")
  if not any(out_dir.iterdir()):
    return NEW
  if not is_run_dir(out_dir):
    raise RunDirError(
      f"--out {out_dir} is not empty and is not a run directory of this project (no "
      f"{MARKER_FILE}, no stored run config beside {CHECKPOINTS_DIR}/); nothing was changed "
      "in it (--overwrite never deletes a folder it does not recognise): choose a new or "
      "empty --out"
    )
  if overwrite:
    return REPLACE
  if not resume:
    raise RunDirError(f"{out_dir} already holds a run; pass --resume to continue it or --overwrite to replace it")
  diff = config_mismatch(out_dir, config)
  if diff:
    raise RunDirError(
      f"{out_dir} holds a run with a different config ({diff}); --resume needs the same config (or use another --out)"
    )
  return RESUME if (out_dir / CONFIG_FILE).exists() else NEW


def prepare(out_dir: str | pathlib.Path, mode: str) -> list[pathlib.Path]:
  """Makes `out_dir` ready for a run that `check` accepted; returns the entries removed.

  REPLACE removes the entries of `RUN_ENTRIES` only; any other file in the folder stays.
  Call on one process only.
  """
  out_dir = pathlib.Path(out_dir)
  removed = []
  if mode == REPLACE:
    if not is_run_dir(out_dir):  # checked again: nothing may be removed from a foreign folder
      raise RunDirError(f"{out_dir} is not a run directory of this project; nothing removed")
    for name in RUN_ENTRIES:
      entry = out_dir / name
      if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry)
      elif entry.exists() or entry.is_symlink():
        entry.unlink()
      else:
        continue
      removed.append(entry)
  out_dir.mkdir(parents=True, exist_ok=True)
  write_json(out_dir / MARKER_FILE, MARKER)
  return removed


def foreign_entries(out_dir: str | pathlib.Path) -> list[str]:
  """Names in `out_dir` that no run writes (kept by --overwrite)."""
  out_dir = pathlib.Path(out_dir)
  if not out_dir.is_dir():
    return []
  return sorted(p.name for p in out_dir.iterdir() if p.name not in RUN_ENTRIES)


# ----------------------------------------------------------------------------- writing records


def write_json(path: pathlib.Path, value: Any, indent: Optional[int] = 2) -> None:
  """Writes through a temporary file, so a record is never half-written."""
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(value, indent=indent))
  tmp.replace(path)


def write_jsonl(path: pathlib.Path, rows: list[Mapping[str, Any]]) -> None:
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
  tmp.replace(path)


def write_start(
  out_dir: pathlib.Path, config: RunConfig, preprocessor_json: str, cohort_record: Mapping[str, Any]
) -> None:
  """The records written when a run starts (after validation): config, preprocessing, cohort."""
  write_json(out_dir / CONFIG_FILE, config_to_dict(absolute_paths(config)))
  tmp = out_dir / (PREPROCESSOR_FILE + ".tmp")
  tmp.write_text(preprocessor_json)
  tmp.replace(out_dir / PREPROCESSOR_FILE)
  write_json(out_dir / COHORT_FILE, dict(cohort_record), indent=1)


def cohort_spec_record(data: str) -> dict[str, Any]:
  """The cohort spec as stored in cohort.json: its `root` made absolute (relative paths in a
  spec start at its `root`, by default the spec's folder), so the record reads from any cwd."""
  if str(data) == "synthetic":
    return {"layout": "synthetic"}
  from smml_jax.data.spec import read_spec

  spec = dict(read_spec(data))
  if spec.get("layout") != "synthetic":
    root = pathlib.Path(os.path.expanduser(str(spec.get("root", "."))))
    if not root.is_absolute():
      root = pathlib.Path(data).resolve().parent / root
    spec["root"] = str(root.resolve())
  return spec


# ----------------------------------------------------------------------------- reading a run


def read_json(path: pathlib.Path, what: str) -> Any:
  """A JSON record of a run; RunDirError naming the file when it is missing or malformed."""
  if not path.is_file():
    raise RunDirError(f"{path} ({what}) does not exist")
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise RunDirError(f"{path} ({what}) is not valid JSON: {e}") from e


def read_jsonl(path: pathlib.Path) -> list[dict]:
  """A JSON-lines record (metrics, predictions); blank lines skipped."""
  if not path.is_file():
    raise RunDirError(f"{path} does not exist")
  rows = []
  for n, line in enumerate(path.read_text().splitlines(), 1):
    if not line.strip():
      continue
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError as e:
      raise RunDirError(f"{path} line {n}: not valid JSON: {e}") from e
  return rows


def read_config(path: str | pathlib.Path) -> RunConfig:
  config_path = pathlib.Path(path) / CONFIG_FILE
  try:
    return config_from_dict(read_json(config_path, "the run config"))
  except ConfigError as e:
    raise RunDirError(f"{config_path}: {e}") from e


def read_summary(path: str | pathlib.Path) -> dict[str, Any]:
  return read_json(pathlib.Path(path) / SUMMARY_FILE, "the finished run's summary")


def is_finished(path: str | pathlib.Path) -> bool:
  return (pathlib.Path(path) / SUMMARY_FILE).is_file()


@dataclasses.dataclass(frozen=True)
class StoredRun:
  """What inference and reports need from a run directory (its checkpoints are restored apart).

  Attributes:
    path: the run directory.
    config: its RunConfig.
    preprocessor: preprocessor.json's object (see `smml_jax.data.normalise.Preprocessor`).
    cohort: cohort.json's object: grid_side, feature_dim, gene_names, splits, spec, path.
    checkpoints: the checkpoints/ folder.
  """

  path: pathlib.Path
  config: RunConfig
  preprocessor: dict[str, Any]
  cohort: dict[str, Any]
  checkpoints: pathlib.Path


COHORT_FIELDS = ("grid_side", "feature_dim", "gene_names")


def load(path: str | pathlib.Path) -> StoredRun:
  """Reads a run directory's records; RunDirError naming the missing or malformed one."""
  path = pathlib.Path(path)
  if not path.is_dir():
    raise RunDirError(f"{path} is not a training run directory: no such folder")
  config = read_config(path)
  preprocessor = read_json(path / PREPROCESSOR_FILE, "the fitted preprocessing")
  cohort = read_json(path / COHORT_FILE, "the training cohort's shapes and gene names")
  for key in COHORT_FIELDS:
    if key not in cohort:
      raise RunDirError(f"{path / COHORT_FILE}: no field {key!r}")
  return StoredRun(
    path=path, config=config, preprocessor=preprocessor, cohort=cohort, checkpoints=path / CHECKPOINTS_DIR
  )


def locate(path: str | pathlib.Path, kinds: tuple[str, ...] = ("best", "latest")) -> tuple[pathlib.Path, Optional[str]]:
  """A run directory or one of its checkpoint folders -> (run directory, kind or None).

  Accepts DIR, DIR/checkpoints, DIR/checkpoints/<kind> and DIR/checkpoints/<kind>/<step>.
  """
  path = pathlib.Path(path).resolve()
  for candidate in (path, *path.parents[:3]):
    if (candidate / CONFIG_FILE).is_file() and (candidate / CHECKPOINTS_DIR).is_dir():
      rel = path.relative_to(candidate).parts
      kind = rel[1] if len(rel) >= 2 and rel[0] == CHECKPOINTS_DIR and rel[1] in kinds else None
      return candidate, kind
  raise RunDirError(
    f"{path} is neither a training run directory ({CONFIG_FILE} + "
    f"{CHECKPOINTS_DIR}/) nor a checkpoint folder inside one"
  )
