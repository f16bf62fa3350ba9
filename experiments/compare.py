"""Compare models across folds: `python -m experiments.compare --task grading --out DIR`.

Trains every (model, fold, seed) cell with `smml_jax.train.loop.train` into
`DIR/runs/<model>/fold<k>-seed<s>/` and aggregates the cells' test metrics (at the epoch selected
on VALIDATION) into DIR/results.csv, DIR/results.md and DIR/predictions.csv.

Config layers per cell (later wins): experiments/configs/<task>.yaml, the comparison config
(experiments/configs/compare_<task>.yaml: its `run` layer, then `model_layers.<model>`), with
--quick experiments/configs/compare_quick.yaml the same way, --config files, the cell's model,
split, fold and seed, and last --set overrides.

Resumable: a cell whose summary.json exists is not retrained (its stored config must match); a
cell that was interrupted continues from its latest checkpoint.

`--cohort tcga-gbmlgg` hands over to experiments.compare_genomic.run_genomic_compare(args).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys
import time
from typing import Any, Mapping, Optional, Sequence

from smml_jax.data.labels import TASK_NUM_CLASSES

CONFIG_DIR = pathlib.Path(__file__).resolve().parent / "configs"
QUICK_CONFIG = CONFIG_DIR / "compare_quick.yaml"
DEFAULT_MODELS = ("abmil", "snn", "concat", "pathomic", "mcat", "subspace")
DEFAULT_PROTOCOL = "kfold3"
COHORTS = ("synthetic", "tcga-gbmlgg")
GENOMIC_PROTOCOLS = ("pnas15", "mcat5")
_COMPARE_KEYS = {"task", "models", "protocol", "seeds", "run", "model_layers"}


class CompareError(ValueError):
  """A comparison setting that does not fit (bad protocol, config file, stale cell)."""


def _comma_list(text: str) -> list[str]:
  items = [t.strip() for t in text.split(",") if t.strip()]
  if not items:
    raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
  return items


def _int_list(text: str) -> list[int]:
  try:
    return [int(t) for t in _comma_list(text)]
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m experiments.compare", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--task", default="grading", choices=sorted(TASK_NUM_CLASSES))
  p.add_argument("--models", type=_comma_list,
                 help="comma list of model names (default: the comparison config's list)")
  p.add_argument("--cohort", default="synthetic", choices=COHORTS,
                 help="'synthetic' (embedded cohort, default) or 'tcga-gbmlgg' (real genomic "
                      "tables; see README)")
  p.add_argument("--protocol",
                 help="synthetic: 'kfoldN' (patient-level stratified N-fold, default kfold3) or "
                      "'original' (one seeded 80/10/10 split); tcga-gbmlgg: pnas15 or mcat5")
  p.add_argument("--folds", type=_int_list, help="run only these folds (comma list)")
  p.add_argument("--seeds", type=_int_list, help="training seeds (comma list, default 0)")
  p.add_argument("--out", required=True, help="comparison directory")
  p.add_argument("--data-root", help="tcga-gbmlgg: folder holding the public TCGA tables")
  p.add_argument("--data-dir", help="where synthetic cohort records are written")
  p.add_argument("--compare-config",
                 help="comparison config (default experiments/configs/compare_<task>.yaml)")
  p.add_argument("--quick", action="store_true",
                 help="CI smoke run: tiny cohort, tiny models, one epoch")
  p.add_argument("--config", action="append", default=[], help="extra run-config layer (YAML)")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="override a run-config key in every cell, e.g. --set train.epochs=5")
  p.add_argument("--overwrite", action="store_true",
                 help="retrain cells whose stored config differs instead of failing")
  return p


def parse_protocol(protocol: str) -> dict[str, Any]:
  """'kfold3' -> {'split': 'kfold', 'n_folds': 3}; 'original' -> {'split': 'original'}."""
  if protocol == "original":
    return {"split": "original"}
  m = re.fullmatch(r"kfold(\d+)", protocol)
  if not m or int(m.group(1)) < 2:
    raise CompareError(f"--protocol {protocol!r}: expected 'original' or 'kfoldN' with N >= 2 "
                       "(e.g. kfold3)")
  return {"split": "kfold", "n_folds": int(m.group(1))}


def read_compare_config(path: pathlib.Path) -> dict[str, Any]:
  """A comparison config: task, models, protocol, seeds, run (layer), model_layers (per model).

  A relative `data.data` / `data.split_file` inside its layers is taken from the file's folder.
  """
  from smml_jax.train.config import read_config_file
  values = read_config_file(path)
  unknown = sorted(set(values) - _COMPARE_KEYS)
  if unknown:
    raise CompareError(f"comparison config {path}: unknown key(s) {unknown}; expected some of "
                       f"{sorted(_COMPARE_KEYS)}")
  layers = values.get("model_layers") or {}
  if not isinstance(layers, Mapping):
    raise CompareError(f"comparison config {path}: 'model_layers' must map model names to "
                       "config layers")
  values["run"] = _resolve_paths(values.get("run") or {}, path.parent, f"{path}: run")
  values["model_layers"] = {m: _resolve_paths(layer or {}, path.parent, f"{path}: model_layers."
                                              f"{m}") for m, layer in layers.items()}
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


def _compare_configs(args: argparse.Namespace) -> list[dict[str, Any]]:
  path = pathlib.Path(args.compare_config) if args.compare_config else (
      CONFIG_DIR / f"compare_{args.task}.yaml")
  configs = []
  if args.compare_config or path.exists():
    configs.append(read_compare_config(path))
    if configs[0].get("task", args.task) != args.task:
      raise CompareError(f"comparison config {path} is for task {configs[0]['task']!r}, not "
                         f"--task {args.task}")
  if args.quick:
    configs.append(read_compare_config(QUICK_CONFIG))
  return configs


def _setting(configs: Sequence[Mapping[str, Any]], key: str, default: Any) -> Any:
  for values in reversed(configs):
    if values.get(key) is not None:
      return values[key]
  return default


def cell_config(args: argparse.Namespace, configs: Sequence[Mapping[str, Any]], model: str,
                split: Mapping[str, Any], fold: int, seed: int,
                teacher: Optional[pathlib.Path] = None):
  """The RunConfig of one (model, fold, seed) cell (layer order: see the module docstring);
  `teacher`: the distilled student's teacher run (that cell's subspace run)."""
  from smml_jax.train.config import make_config, read_config_file
  layers = [read_config_file(CONFIG_DIR / f"{args.task}.yaml")]
  for values in configs:
    layers += [values["run"], values["model_layers"].get(model, {})]
  layers += [read_config_file(path) for path in args.config]
  data: dict[str, Any] = {**split, "fold": fold}
  if args.data_dir:
    data["data_dir"] = args.data_dir
  layers.append({"task": args.task, "model": model, "data": data, "train": {"seed": seed}})
  if teacher is not None:
    layers.append({"distill": {"teacher": str(teacher)}})
  return make_config(*layers, overrides=args.set)


def check_teacher_order(models: Sequence[str]) -> None:
  """The student's teacher is its cell's subspace run: `subspace` must be trained first."""
  from smml_jax.models.registry import STUDENT
  if STUDENT in models and ("subspace" not in models
                            or models.index("subspace") > models.index(STUDENT)):
    raise CompareError(f"--models: {STUDENT!r} is distilled from each cell's 'subspace' run; "
                       f"list 'subspace' before it (e.g. --models subspace,{STUDENT})")


def _run_cell(config, cell_dir: pathlib.Path, *, overwrite: bool,
              log) -> str:
  """Trains one cell unless it is finished; returns 'skipped', 'resumed' or 'trained'."""
  from smml_jax.train import run_dir
  from smml_jax.train.loop import train
  diff = run_dir.config_mismatch(cell_dir, config)
  if diff and not overwrite:
    raise CompareError(f"{cell_dir} holds a run with a different config ({diff}); pass "
                       "--overwrite to retrain it, or use another --out")
  if run_dir.is_finished(cell_dir) and not diff:
    return "skipped"
  resume = run_dir.is_run_dir(cell_dir) and not diff
  cell_path = cell_dir / run_dir.CELL_FILE
  before = json.loads(cell_path.read_text()).get("wall_s", 0.0) if (
      resume and cell_path.exists()) else 0.0
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
  text = f"{hours}h{minutes:02d}m" if hours else (f"{minutes}m{seconds:02d}s" if minutes else
                                                   f"{seconds}s")
  return f"ETA {text}"


def run_compare(args: argparse.Namespace, log=print) -> int:
  """The synthetic / spec-file comparison; returns the process exit code."""
  from smml_jax.evaluate import comparison
  from smml_jax.models.registry import model_names
  if args.data_root:
    raise CompareError("--data-root applies to --cohort tcga-gbmlgg only")
  configs = _compare_configs(args)
  models = args.models or list(_setting(configs, "models", DEFAULT_MODELS))
  unknown = [m for m in models if m not in model_names()]
  if unknown:
    raise CompareError(f"--models: unknown model(s) {unknown}; expected some of "
                       f"{list(model_names())}")
  check_teacher_order(models)
  protocol = args.protocol or _setting(configs, "protocol", DEFAULT_PROTOCOL)
  split = parse_protocol(protocol)
  all_folds = list(range(split.get("n_folds", 1)))
  folds = args.folds if args.folds is not None else all_folds
  bad = [f for f in folds if f not in all_folds]
  if bad:
    raise CompareError(f"--folds {bad}: protocol {protocol!r} has folds {all_folds}")
  seeds = args.seeds or [int(s) for s in _setting(configs, "seeds", [0])]
  out = pathlib.Path(args.out)
  cells, counts, t_start = [], {"trained": 0, "resumed": 0, "skipped": 0}, time.perf_counter()
  grid = [(model, fold, seed) for model in models for fold in folds for seed in seeds]
  durations: list[float] = []  # of the runs that trained (finished ones are skipped in ~0 s)
  for k, (model, fold, seed) in enumerate(grid, start=1):
    teacher = (comparison.cell_dir(out, "subspace", fold, seed) if model == "subspace-student"
               else None)
    config = cell_config(args, configs, model, split, fold, seed, teacher=teacher)
    run_dir = comparison.cell_dir(out, model, fold, seed)
    where = f"[compare {k}/{len(grid)}] {model} fold {fold} seed {seed}"
    log(f"{where}: starting {eta(durations, len(grid) - k + 1)}".rstrip())
    t0 = time.perf_counter()
    status = _run_cell(config, run_dir, overwrite=args.overwrite,
                       log=lambda line: log(f"  {line}"))
    counts[status] += 1
    if status != "skipped":
      durations.append(time.perf_counter() - t0)
    cell = comparison.read_cell(run_dir, model, fold, seed, args.task)
    metrics = "  ".join(f"{name} {'n/a' if v is None else f'{v:.4f}'}"
                        for name, v in cell.test_metrics.items())
    log(f"{where}: {status} ({time.perf_counter() - t0:.1f}s)  test {metrics}")
    cells.append(cell)
  wall = time.perf_counter() - t_start
  header = (f"# {args.task} comparison ({'quick, ' if args.quick else ''}protocol {protocol}, "
            f"folds {folds}, seeds {seeds}, cohort {args.cohort})\n\n"
            f"Test metrics at the epoch selected on validation; mean ± sample std over "
            f"folds x seeds. This invocation: {counts['trained']} trained, {counts['resumed']} "
            f"resumed, {counts['skipped']} skipped, {wall:.0f}s.")
  paths = comparison.write_comparison(out, args.task, cells, models, header=header)
  log(paths["markdown"].read_text())
  log(f"[compare] done: {counts['trained']} trained, {counts['resumed']} resumed, "
      f"{counts['skipped']} skipped in {wall:.1f}s; results in {paths['results']}")
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  if args.cohort == "tcga-gbmlgg":
    if args.protocol is not None and args.protocol not in GENOMIC_PROTOCOLS:
      parser.error(f"--protocol {args.protocol!r}: --cohort tcga-gbmlgg takes one of "
                   f"{GENOMIC_PROTOCOLS}")
    from .compare_genomic import run_genomic_compare
    return run_genomic_compare(args)
  from smml_jax.data.errors import CohortError
  from smml_jax.evaluate.comparison import ComparisonError
  from smml_jax.train.checkpoints import CheckpointError
  from smml_jax.train.config import ConfigError
  from smml_jax.train.loop import TrainingDiverged
  from smml_jax.train.run_dir import RunDirError
  try:
    return run_compare(args)
  except (CompareError, ComparisonError, ConfigError, RunDirError, CohortError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except (TrainingDiverged, CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 3


if __name__ == "__main__":
  sys.exit(main())
