"""Missing-expression studies on a synthetic cohort (the library of `experiments.missing_expression`).

`robustness`: test AUC (full test inputs) of `subspace` trained with a fraction of the training
patients' expression dropped (`data.drop_expression`), per fraction and seed, with the WSI-only
models as reference lines (they do not depend on the fraction): `abmil`, and `subspace-student`
distilled from the same seed's fraction-0 subspace run (its teacher: same cohort, split and seed).
The student's `distill.feature_weight` is swept and chosen on the mean validation metric over
seeds; the test metric is read for the chosen value only. `survival`: C-index of `subspace` with
the batch C-index vs the confidence coordination score, per seed.

Every number is the test metric at the validation-selected epoch; tables give mean +- std (ddof 1)
over seeds. Writes <out>/cohort.yaml, <out>/<run>-seed<seed>/ (one run directory per run),
<out>/results.json ({name: [row per seed]}), <out>/table.md and, for robustness,
<out>/sweep.json (the candidates' validation rows and the choice) and <out>/robustness.png.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import tempfile
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import yaml

from smml_jax.evaluate.figures.robustness import plot_robustness

ROBUSTNESS = "robustness"
STUDIES = (ROBUSTNESS, "survival")  # the second: the survival coordination scores
STUDENT = "subspace-student"
REFERENCES = ("abmil", STUDENT)
FEATURE_WEIGHTS = (0.01, 0.1, 1.0)
TINY_SUBSPACE = {"dim": 16, "heads": 2, "dim_head": 8, "offset_groups": 2, "cpb_hidden": 8, "snn_widths": [16, 16]}
TINY_OPTIONS = {
  "subspace": TINY_SUBSPACE,
  STUDENT: {**TINY_SUBSPACE, "predictor_hidden": 16},
  "abmil": {"hidden": 16, "attention_hidden": 16},
}
COHORT = {
  "layout": "synthetic",
  "n_patients": 160,
  "grid_side": 8,
  "feature_dim": 32,
  "n_genes_tumour": 16,
  "n_genes_micro": 24,
}

Row = dict[str, Any]
TrainFn = Callable[..., Mapping[str, Any]]


class StudyError(ValueError):
  """Settings that cannot give a study (raised before anything is written)."""


@dataclasses.dataclass(frozen=True)
class StudySettings:
  """What `run_study` runs; `cohort` and `model_options` default to the study's own."""

  study: str
  out: pathlib.Path
  seeds: tuple[int, ...] = (0, 1, 2)
  fractions: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
  epochs: int = 6
  data_dir: Optional[str] = None
  references: tuple[str, ...] = REFERENCES
  feature_weights: tuple[float, ...] = FEATURE_WEIGHTS
  cohort: Mapping[str, Any] = dataclasses.field(default_factory=lambda: dict(COHORT))
  model_options: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=lambda: dict(TINY_OPTIONS))


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run: results key `name`, `group` ('curve' | 'reference' | 'sweep' |
  'setting'), the config layer over the study's base, and the swept value (sweep runs)."""

  name: str
  seed: int
  group: str
  layer: Mapping[str, Any]
  value: Optional[float] = None

  @property
  def dir_name(self) -> str:
    return f"{self.name}-seed{self.seed}"


def curve_name(fraction: float) -> str:
  return f"drop{fraction:g}"


def sweep_name(weight: float) -> str:
  return f"{STUDENT}-fw{weight:g}"


def check_settings(s: StudySettings) -> None:
  """StudyError naming the setting and what was expected."""
  if s.study not in STUDIES:
    raise StudyError(f"study {s.study!r}: expected one of {STUDIES}")
  if not s.seeds or len(set(s.seeds)) != len(s.seeds):
    raise StudyError(f"seeds {list(s.seeds)}: expected at least one seed, each once")
  if s.epochs < 1:
    raise StudyError(f"epochs {s.epochs}: expected at least 1")
  if s.study != ROBUSTNESS:
    return
  if not s.fractions or any(not 0 <= f <= 1 for f in s.fractions) or (len(set(s.fractions)) != len(s.fractions)):
    raise StudyError(f"fractions {list(s.fractions)}: expected distinct values in [0, 1]")
  unknown = sorted(set(s.references) - set(REFERENCES))
  if unknown:
    raise StudyError(f"references {unknown}: expected a subset of {list(REFERENCES)}")
  if STUDENT in s.references:
    if 0.0 not in s.fractions:
      raise StudyError(
        f"fractions {list(s.fractions)}: the {STUDENT} reference is distilled "
        "from the fraction-0 subspace run of each seed; include 0 or leave "
        f"{STUDENT} out of the references"
      )
    w = s.feature_weights
    if not w or any(not np.isfinite(x) or x < 0 for x in w) or len(set(w)) != len(w):
      raise StudyError(f"feature_weights {list(w)}: expected distinct finite values >= 0")


def check_out(out: pathlib.Path) -> None:
  """StudyError unless `out` is new, empty or an earlier study's folder (whose runs a rerun
  replaces): a study never replaces a folder it did not write."""
  if out.exists() and not out.is_dir():
    raise StudyError(f"out {out}: exists and is not a folder")
  if out.is_dir() and any(out.iterdir()) and not (out / "cohort.yaml").is_file():
    raise StudyError(
      f"out {out}: holds files but no cohort.yaml, so it is not a study's folder "
      "(a study replaces its own run folders): choose a new or empty folder"
    )


def plan(s: StudySettings) -> list[Run]:
  """The runs in training order: every teacher (the fraction-0 run) before its students."""
  if s.study != ROBUSTNESS:
    return [
      Run(score, seed, "setting", {"task": "survival", "train": {"coordination_score": score, "class_weights": "none"}})
      for score in ("cindex", "confidence")
      for seed in s.seeds
    ]
  grading = {"task": "grading", "train": {"class_weights": "train"}}
  runs = [
    Run(curve_name(f), seed, "curve", {**grading, "data": {"drop_expression": f}})
    for f in sorted(s.fractions)
    for seed in s.seeds
  ]
  if "abmil" in s.references:
    runs += [Run("abmil", seed, "reference", {**grading, "model": "abmil"}) for seed in s.seeds]
  if STUDENT in s.references:
    runs += [
      Run(
        sweep_name(w),
        seed,
        "sweep",
        {
          **grading,
          "model": STUDENT,
          "distill": {"teacher": str(s.out / Run(curve_name(0.0), seed, "", {}).dir_name), "feature_weight": w},
        },
        value=w,
      )
      for w in s.feature_weights
      for seed in s.seeds
    ]
  return runs


def run_config(s: StudySettings, run: Run, spec: pathlib.Path):
  """The RunConfig of one run: the study's base (cohort, split seed = run seed) + its layer."""
  from smml_jax.train.config import make_config, merge

  model = run.layer.get("model", "subspace")
  base = {
    "model": "subspace",
    "model_options": dict(s.model_options[model]),
    "data": {
      "data": str(spec),
      "data_dir": s.data_dir,
      "val_fraction": 0.2,
      "test_fraction": 0.2,
      "split_seed": run.seed,
    },
    "train": {"epochs": s.epochs, "batch_size": 8, "eval_batch_size": 32, "seed": run.seed, "progress": False},
    "optim": {"learning_rate": 1e-3, "weight_decay": 0.1, "coupled_weight_decay": False},
  }
  return make_config(merge(base, dict(run.layer)))


def _row(run: Run, summary: Mapping[str, Any], wall_s: float) -> Row:
  metric = summary["selection_metric"]
  row = {
    "seed": run.seed,
    "metric": metric,
    "val": float(summary["val"][metric]),
    "best_epoch": int(summary["best_epoch"]),
    "wall_s": wall_s,
  }
  if run.group != "sweep":  # a candidate's test metric is read only once it is chosen
    row["test"] = float(summary["test"][metric])
  if not np.isfinite(row["val"]) or not np.isfinite(row.get("test", 0.0)):
    raise StudyError(f"run {run.dir_name}: a non-finite {metric} ({row}); the study stops rather than average it")
  return row


def select_on_validation(candidates: Mapping[float, Sequence[Row]]) -> tuple[float, dict]:
  """(chosen value, {value: validation mean}) : the highest mean validation metric over seeds
  (ties: the first value given). Reads each row's 'val' only."""
  means = {v: float(np.mean([r["val"] for r in rows])) for v, rows in candidates.items()}
  best = max(means, key=lambda v: (means[v], -list(means).index(v)))
  return best, means


def _read_test(path: pathlib.Path, row: Row) -> Row:
  """The chosen candidate's row with its test metric, from the run's summary (the same run)."""
  from smml_jax.train.run_dir import SUMMARY_FILE

  file = path / SUMMARY_FILE
  summary = json.loads(file.read_text())
  metric = row["metric"]
  if float(summary["val"][metric]) != row["val"]:
    raise StudyError(
      f"{file}: field val.{metric} {summary['val'][metric]} is not the "
      f"{row['val']} this study recorded for it: the run changed underneath"
    )
  test = float(summary["test"][metric])
  if not np.isfinite(test):
    raise StudyError(f"{file}: field test.{metric} is {test}, expected a finite value")
  return {**row, "test": test}


def mean_std(rows: Sequence[Row], key: str = "test") -> tuple[float, float]:
  values = np.asarray([r[key] for r in rows], np.float64)
  return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else float("nan")


def run_study(
  s: StudySettings, *, log: Callable[[str], None] = print, train_fn: Optional[TrainFn] = None
) -> dict[str, list[Row]]:
  """Trains every run of `plan(s)` and writes the study's files (module docstring).

  `train_fn(config, run_dir, overwrite=, log=) -> summary` defaults to `train.loop.train`.
  Returns {results name: [row per seed]}; the student's row is the chosen feature weight's.
  """
  check_settings(s)
  runs = plan(s)
  out = pathlib.Path(s.out)
  check_out(out)
  with tempfile.TemporaryDirectory() as tmp:  # every config (and the cohort spec) checked first
    draft = pathlib.Path(tmp) / "cohort.yaml"
    draft.write_text(yaml.safe_dump(dict(s.cohort)))
    for run in runs:
      run_config(s, run, draft)
  if train_fn is None:
    from smml_jax.train.compile_cache import use_compile_cache

    use_compile_cache(out / "jax_cache")  # seeds differ only in data: each program compiles once
    from smml_jax.train.loop import train as train_fn
  out.mkdir(parents=True, exist_ok=True)
  spec = out / "cohort.yaml"
  spec.write_text(yaml.safe_dump(dict(s.cohort)))
  configs = [run_config(s, run, spec) for run in runs]
  results: dict[str, list[Row]] = {}
  sweep: dict[float, list[Row]] = {}
  for run, config in zip(runs, configs):
    t0 = time.perf_counter()
    summary = train_fn(config, out / run.dir_name, overwrite=True, log=lambda _: None)
    row = _row(run, summary, time.perf_counter() - t0)
    shown = f"test {row['metric']} {row['test']:.4f}, " if "test" in row else ""
    log(f"{run.dir_name}: {shown}val {row['val']:.4f} at epoch {row['best_epoch']} ({row['wall_s']:.0f}s)")
    if run.group == "sweep":
      sweep.setdefault(run.value, []).append(row)
    else:
      results.setdefault(run.name, []).append(row)
      (out / "results.json").write_text(json.dumps(results, indent=1))
  choice = None
  if sweep:
    chosen, means = select_on_validation(sweep)
    results[STUDENT] = [_read_test(out / Run(sweep_name(chosen), r["seed"], "", {}).dir_name, r) for r in sweep[chosen]]
    choice = {
      "parameter": "distill.feature_weight",
      "chosen": chosen,
      "val_mean": means,
      "candidates": {str(v): rows for v, rows in sweep.items()},
    }
    (out / "sweep.json").write_text(json.dumps(choice, indent=1))
    (out / "results.json").write_text(json.dumps(results, indent=1))
  text = table(results) + ("" if choice is None else "\n" + sweep_table(choice))
  (out / "table.md").write_text(text)
  log(text)
  if s.study == ROBUSTNESS:
    write_figure(results, s, out / "robustness.png")
  return results


def _label(name: str) -> str:
  if name == STUDENT:
    return f"{STUDENT} (slides only, reference; feature_weight chosen on validation)"
  return f"{name} (slides only, reference)" if name in REFERENCES else name


def table(results: Mapping[str, Sequence[Row]]) -> str:
  """Markdown: one row per setting (the curve, then the reference lines)."""
  lines = ["| setting | test metric (mean ± std) | per seed | wall s (total) |", "|---|---|---|---|"]
  for name, rows in results.items():
    mean, std = mean_std(rows)
    seeds = ", ".join(f"{r['test']:.3f}" for r in rows)
    lines.append(
      f"| {_label(name)} | {rows[0]['metric']} {mean:.3f} ± {std:.3f} | {seeds} | "
      f"{sum(r['wall_s'] for r in rows):.0f} |"
    )
  return "\n".join(lines) + "\n"


def sweep_table(choice: Mapping[str, Any]) -> str:
  """Markdown: each candidate's validation metric; the test metric of the chosen one only."""
  lines = [f"| {choice['parameter']} | val metric (mean ± std) | per seed (val) | chosen |", "|---|---|---|---|"]
  for value, rows in choice["candidates"].items():
    mean, std = mean_std(rows, "val")
    seeds = ", ".join(f"{r['val']:.3f}" for r in rows)
    mark = "**yes**" if float(value) == choice["chosen"] else ""
    lines.append(f"| {float(value):g} | {rows[0]['metric']} {mean:.3f} ± {std:.3f} | {seeds} | {mark} |")
  return "\n".join(lines) + "\n"


def write_figure(results: Mapping[str, Sequence[Row]], s: StudySettings, path: pathlib.Path) -> pathlib.Path:
  """The robustness curve with each WSI-only model as a horizontal reference line."""
  curve = [(100 * f, *mean_std(results[curve_name(f)])) for f in sorted(s.fractions) if curve_name(f) in results]
  references = {name: mean_std(results[name]) for name in REFERENCES if name in results}
  return plot_robustness(curve, references, path, ylabel="test AUC (full test inputs)")
