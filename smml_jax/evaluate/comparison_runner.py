"""Runs a comparison: trains every (model, fold, seed) cell and aggregates their test metrics.

What `smml-compare` runs for a synthetic / spec-file cohort. Each cell is trained with
`smml_jax.train.loop.train` into `<out>/runs/<model>/fold<k>-seed<s>/`; `smml_jax.evaluate.comparison`
reads the cells (test metrics at the epoch selected on VALIDATION) and writes results.csv,
results.md and predictions.csv.

Config layers per cell (later wins): <config_dir>/<task>.yaml, the comparison config
(<config_dir>/compare_<task>.yaml: its `run` layer, then `model_layers.<model>`), when quick
<config_dir>/compare_quick.yaml the same way, the extra config files, the cell's model, split, fold
and seed, and last the `key=value` overrides.

Compiled programs are cached in <out>/jax_cache (unless the process chose a cache already).

Resumable: a cell whose summary.json exists is not retrained (its stored config must match); a
cell that was interrupted continues from its latest checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
import time
from typing import Any, Callable, Mapping, Optional, Sequence

DEFAULT_MODELS = ("abmil", "snn", "concat", "pathomic", "mcat", "subspace")
DEFAULT_PROTOCOL = "kfold3"
_COMPARE_KEYS = {"task", "models", "protocol", "seeds", "run", "model_layers"}


class CompareError(ValueError):
  """A comparison setting that does not fit (bad protocol, config file, stale cell)."""


@dataclasses.dataclass(frozen=True)
class CompareSettings:
  """One comparison: which cells, with which config layers, written where.

  Attributes:
    task: the task every cell trains.
    out: the comparison directory.
    config_dir: holds <task>.yaml, compare_<task>.yaml and compare_quick.yaml.
    models, protocol, folds, seeds: None takes the comparison config's (else the defaults:
      DEFAULT_MODELS, DEFAULT_PROTOCOL, every fold, seed 0).
    compare_config: a comparison config file (default <config_dir>/compare_<task>.yaml if any).
    quick: add the CI smoke layer (compare_quick.yaml).
    config_files, overrides: extra run-config layers and `key=value` overrides for every cell.
    data_dir: where synthetic cohort records are written.
    overwrite: retrain cells whose stored config differs instead of failing.
    cohort: the cohort's name, for the results header.
  """

  task: str
  out: pathlib.Path
  config_dir: pathlib.Path
  models: Optional[Sequence[str]] = None
  protocol: Optional[str] = None
  folds: Optional[Sequence[int]] = None
  seeds: Optional[Sequence[int]] = None
  compare_config: Optional[str] = None
  quick: bool = False
  config_files: Sequence[str] = ()
  overrides: Sequence[str] = ()
  data_dir: Optional[str] = None
  overwrite: bool = False
  cohort: str = "synthetic"


def parse_protocol(protocol: str) -> dict[str, Any]:
  """'kfold3' -> {'split': 'kfold', 'n_folds': 3}; 'original' -> {'split': 'original'}."""
  if protocol == "original":
    return {"split": "original"}
  m = re.fullmatch(r"kfold(\d+)", protocol)
  if not m or int(m.group(1)) < 2:
    raise CompareError(f"--protocol {protocol!r}: expected 'original' or 'kfoldN' with N >= 2 (e.g. kfold3)")
  return {"split": "kfold", "n_folds": int(m.group(1))}


def read_compare_config(path: pathlib.Path) -> dict[str, Any]:
  """A comparison config: task, models, protocol, seeds, run (layer), model_layers (per model).

  A relative `data.data` / `data.split_file` inside its layers is taken from the file's folder.
  """
  from smml_jax.train.config import read_config_file

  values = read_config_file(path)
  unknown = sorted(set(values) - _COMPARE_KEYS)
  if unknown:
    raise CompareError(f"comparison config {path}: unknown key(s) {unknown}; expected some of {sorted(_COMPARE_KEYS)}")
  layers = values.get("model_layers") or {}
  if not isinstance(layers, Mapping):
    raise CompareError(f"comparison config {path}: 'model_layers' must map model names to config layers")
  values["run"] = _resolve_paths(values.get("run") or {}, path.parent, f"{path}: run")
  values["model_layers"] = {
    m: _resolve_paths(layer or {}, path.parent, f"{path}: model_layers.{m}") for m, layer in layers.items()
  }
  return values


def _resolve_paths(layer: Any, base: pathlib.Path, where: str) -> dict[str, Any]:
  if not isinstance(layer, Mapping):
    raise CompareError(f"{where}: expected a config layer (mapping), got {layer!r}")
  layer = dict(layer)
  data = layer.get("data")
  if isinstance(data, Mapping):
    data = dict(data)
    for key in ("data", "split_file"):
      value = data.get(key)
      if isinstance(value, str) and value != "synthetic" and not pathlib.Path(value).is_absolute():
        data[key] = str((base / value).resolve())
    layer["data"] = data
  return layer


def compare_configs(settings: CompareSettings) -> list[dict[str, Any]]:
  """The comparison configs that apply, in layer order (the task's, then the quick one)."""
  path = (
    pathlib.Path(settings.compare_config)
    if settings.compare_config
    else (settings.config_dir / f"compare_{settings.task}.yaml")
  )
  configs = []
  if settings.compare_config or path.exists():
    configs.append(read_compare_config(path))
    if configs[0].get("task", settings.task) != settings.task:
      raise CompareError(f"comparison config {path} is for task {configs[0]['task']!r}, not --task {settings.task}")
  if settings.quick:
    configs.append(read_compare_config(settings.config_dir / "compare_quick.yaml"))
  return configs


def _setting(configs: Sequence[Mapping[str, Any]], key: str, default: Any) -> Any:
  for values in reversed(configs):
    if values.get(key) is not None:
      return values[key]
  return default


def cell_config(
  settings: CompareSettings,
  configs: Sequence[Mapping[str, Any]],
  model: str,
  split: Mapping[str, Any],
  fold: int,
  seed: int,
  teacher: Optional[pathlib.Path] = None,
):
  """The RunConfig of one (model, fold, seed) cell (layer order: see the module docstring);
  `teacher`: the distilled student's teacher run (that cell's subspace run)."""
  from smml_jax.train.config import make_config, read_config_file

  layers = [read_config_file(settings.config_dir / f"{settings.task}.yaml")]
  for values in configs:
    layers += [values["run"], values["model_layers"].get(model, {})]
  layers += [read_config_file(path) for path in settings.config_files]
  data: dict[str, Any] = {**split, "fold": fold}
  if settings.data_dir:
    data["data_dir"] = settings.data_dir
  layers.append({"task": settings.task, "model": model, "data": data, "train": {"seed": seed}})
  if teacher is not None:
    layers.append({"distill": {"teacher": str(teacher)}})
  return make_config(*layers, overrides=settings.overrides)


def check_teacher_order(models: Sequence[str]) -> None:
  """The student's teacher is its cell's subspace run: `subspace` must be trained first."""
  from smml_jax.models.registry import STUDENT

  if STUDENT in models and ("subspace" not in models or models.index("subspace") > models.index(STUDENT)):
    raise CompareError(
      f"--models: {STUDENT!r} is distilled from each cell's 'subspace' run; "
      f"list 'subspace' before it (e.g. --models subspace,{STUDENT})"
    )


def _run_cell(config, cell_dir: pathlib.Path, *, overwrite: bool, log) -> str:
  """Trains one cell unless it is finished; returns 'skipped', 'resumed' or 'trained'."""
  from smml_jax.train import run_dir
  from smml_jax.train.loop import train

  diff = run_dir.config_mismatch(cell_dir, config)
  if diff and not overwrite:
    raise CompareError(
      f"{cell_dir} holds a run with a different config ({diff}); pass --overwrite to retrain it, or use another --out"
    )
  if run_dir.is_finished(cell_dir) and not diff:
    return "skipped"
  resume = run_dir.is_run_dir(cell_dir) and not diff
  cell_path = cell_dir / run_dir.CELL_FILE
  before = json.loads(cell_path.read_text()).get("wall_s", 0.0) if (resume and cell_path.exists()) else 0.0
  t0 = time.perf_counter()
  train(config, cell_dir, resume=resume, overwrite=bool(diff), log=log)
  wall = time.perf_counter() - t0
  run_dir.write_json(cell_path, {"wall_s": before + wall, "resumed": resume}, indent=None)
  return "resumed" if resume else "trained"


def eta(durations: Sequence[float], remaining: int) -> str:
  """'ETA 3m20s' from the seconds the runs so far took (mean x remaining); '' before any."""
  if not durations or remaining <= 0:
    return "" if remaining > 0 else "ETA 0s"
  seconds = round(sum(durations) / len(durations) * remaining)
  minutes, seconds = divmod(seconds, 60)
  hours, minutes = divmod(minutes, 60)
  text = f"{hours}h{minutes:02d}m" if hours else (f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s")
  return f"ETA {text}"


def run_compare(settings: CompareSettings, log: Callable[[str], None] = print) -> dict[str, pathlib.Path]:
  """Trains the comparison's cells (skipping finished ones) and writes its results.

  Returns:
    `comparison.write_comparison`'s paths ('results', 'markdown', ...).
  """
  from smml_jax.evaluate import comparison
  from smml_jax.models.registry import STUDENT, model_names
  from smml_jax.train.compile_cache import use_compile_cache

  configs = compare_configs(settings)
  models = list(settings.models or _setting(configs, "models", DEFAULT_MODELS))
  unknown = [m for m in models if m not in model_names()]
  if unknown:
    raise CompareError(f"--models: unknown model(s) {unknown}; expected some of {list(model_names())}")
  check_teacher_order(models)
  protocol = settings.protocol or _setting(configs, "protocol", DEFAULT_PROTOCOL)
  split = parse_protocol(protocol)
  all_folds = list(range(split.get("n_folds", 1)))
  folds = list(settings.folds) if settings.folds is not None else all_folds
  bad = [f for f in folds if f not in all_folds]
  if bad:
    raise CompareError(f"--folds {bad}: protocol {protocol!r} has folds {all_folds}")
  seeds = list(settings.seeds or [int(s) for s in _setting(configs, "seeds", [0])])
  out = pathlib.Path(settings.out)
  use_compile_cache(out / "jax_cache")  # cells of one model differ in data only: one compile each
  cells, counts, t_start = [], {"trained": 0, "resumed": 0, "skipped": 0}, time.perf_counter()
  grid = [(model, fold, seed) for model in models for fold in folds for seed in seeds]
  durations: list[float] = []  # of the runs that trained (finished ones are skipped in ~0 s)
  for k, (model, fold, seed) in enumerate(grid, start=1):
    teacher = comparison.cell_dir(out, "subspace", fold, seed) if model == STUDENT else None
    config = cell_config(settings, configs, model, split, fold, seed, teacher=teacher)
    run_dir = comparison.cell_dir(out, model, fold, seed)
    where = f"[compare {k}/{len(grid)}] {model} fold {fold} seed {seed}"
    log(f"{where}: starting {eta(durations, len(grid) - k + 1)}".rstrip())
    t0 = time.perf_counter()
    status = _run_cell(config, run_dir, overwrite=settings.overwrite, log=lambda line: log(f"  {line}"))
    counts[status] += 1
    if status != "skipped":
      durations.append(time.perf_counter() - t0)
    cell = comparison.read_cell(run_dir, model, fold, seed, settings.task)
    metrics = "  ".join(f"{name} {'n/a' if v is None else f'{v:.4f}'}" for name, v in cell.test_metrics.items())
    log(f"{where}: {status} ({time.perf_counter() - t0:.1f}s)  test {metrics}")
    cells.append(cell)
  wall = time.perf_counter() - t_start
  header = (
    f"# {settings.task} comparison ({'quick, ' if settings.quick else ''}protocol "
    f"{protocol}, folds {folds}, seeds {seeds}, cohort {settings.cohort})\n\n"
    f"Test metrics at the epoch selected on validation; mean ± sample std over "
    f"folds x seeds. This invocation: {counts['trained']} trained, {counts['resumed']} "
    f"resumed, {counts['skipped']} skipped, {wall:.0f}s."
  )
  paths = comparison.write_comparison(out, settings.task, cells, models, header=header)
  log(paths["markdown"].read_text())
  log(
    f"[compare] done: {counts['trained']} trained, {counts['resumed']} resumed, "
    f"{counts['skipped']} skipped in {wall:.1f}s; results in {paths['results']}"
  )
  return paths
