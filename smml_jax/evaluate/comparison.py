"""Aggregates per-(model, fold, seed) training runs into a comparison table.

Each cell is one `smml_jax.train.loop.train` run directory holding summary.json (val/test metrics
at the epoch selected on VALIDATION), metrics.jsonl (per-epoch rows; train rows carry
`slides_per_s`) and predictions_test.jsonl (one row per test slide at that epoch). This module
reads those records only: it never trains.

Outputs (see `write_comparison`):
  results.csv      model, task, metric, mean, std, n_folds: mean and SAMPLE std (ddof=1) of each
                   test metric over the model's cells (folds x seeds); n_folds counts the cells
                   that report the metric.
  results.md       one Markdown row per model: mean ± std per metric, parameter count, median
                   training throughput (slides/s) and mean wall time per cell.
  predictions.csv  one row per (model, fold, seed, test slide).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from smml_jax.tasks import get_task
from smml_jax.train import run_dir as run_dir_lib

RESULT_COLUMNS = ("model", "task", "metric", "mean", "std", "n_folds")
SUMMARY_FILE, METRICS_FILE = run_dir_lib.SUMMARY_FILE, run_dir_lib.METRICS_FILE
PREDICTIONS_FILE = run_dir_lib.predictions_file("test")
CELL_FILE = run_dir_lib.CELL_FILE  # written by experiments.compare: wall time of the cell


class ComparisonError(ValueError):
  """A run directory that cannot enter the comparison (missing or malformed records)."""


def task_metrics(task: str) -> tuple[str, ...]:
  """The metrics a comparison aggregates for `task` (`Task.comparison_metrics`)."""
  return get_task(task).comparison_metrics


def cell_dir(out_dir: str | pathlib.Path, model: str, fold: int, seed: int) -> pathlib.Path:
  """`<out>/runs/<model>/fold<k>-seed<s>`."""
  return pathlib.Path(out_dir) / "runs" / model / f"fold{fold}-seed{seed}"


@dataclasses.dataclass(frozen=True)
class CellResult:
  """The records of one finished (model, fold, seed) run.

  test_metrics: metric name -> value (None when undefined on that split, e.g. a missing class).
  slides_per_s: median training throughput over the run's epochs (None if not logged).
  predictions: one dict per test slide (predictions_test.jsonl rows).
  """

  model: str
  fold: int
  seed: int
  run_dir: pathlib.Path
  test_metrics: Mapping[str, Optional[float]]
  best_epoch: int
  n_params: Optional[int]
  slides_per_s: Optional[float]
  wall_s: Optional[float]
  predictions: tuple[Mapping[str, Any], ...]


def _read_json(path: pathlib.Path) -> Any:
  if not path.exists():
    raise ComparisonError(f"{path} does not exist: the run has not finished")
  try:
    return run_dir_lib.read_json(path, "a run record")
  except run_dir_lib.RunDirError as e:
    raise ComparisonError(str(e)) from e


def _read_jsonl(path: pathlib.Path) -> list[dict]:
  try:
    return run_dir_lib.read_jsonl(path)
  except run_dir_lib.RunDirError as e:
    raise ComparisonError(str(e)) from e


def _number(value: Any) -> Optional[float]:
  if value is None:
    return None
  value = float(value)
  return None if math.isnan(value) else value


def read_cell(run_dir: str | pathlib.Path, model: str, fold: int, seed: int, task: str) -> CellResult:
  """Reads one finished run directory (summary.json, metrics.jsonl, predictions_test.jsonl)."""
  run_dir = pathlib.Path(run_dir)
  summary = _read_json(run_dir / SUMMARY_FILE)
  test = summary.get("test")
  if not isinstance(test, Mapping):
    raise ComparisonError(
      f"{run_dir / SUMMARY_FILE}: field 'test' holds no metrics (no epoch "
      f"improved the validation {summary.get('selection_metric')!r}?)"
    )
  metrics = {name: _number(test.get(name)) for name in task_metrics(task)}
  throughput = [
    float(r["slides_per_s"])
    for r in _read_jsonl(run_dir / METRICS_FILE)
    if r.get("split") == "train" and r.get("slides_per_s") is not None
  ]
  cell_path = run_dir / CELL_FILE
  wall = _read_json(cell_path).get("wall_s") if cell_path.exists() else None
  n_params = summary.get("n_params")
  return CellResult(
    model=model,
    fold=fold,
    seed=seed,
    run_dir=run_dir,
    test_metrics=metrics,
    best_epoch=int(summary.get("best_epoch", -1)),
    n_params=None if n_params is None else int(n_params),
    slides_per_s=float(np.median(throughput)) if throughput else None,
    wall_s=None if wall is None else float(wall),
    predictions=tuple(_read_jsonl(run_dir / PREDICTIONS_FILE)),
  )


def aggregate(cells: Sequence[CellResult], task: str, models: Optional[Sequence[str]] = None) -> pd.DataFrame:
  """results.csv rows: per model and metric, mean and sample std over the cells (folds x seeds).

  A metric that is undefined in a cell (None) is left out of that metric's mean; `n_folds`
  counts the cells that contributed. std is NaN with fewer than two values.
  """
  models = list(models) if models is not None else list(dict.fromkeys(c.model for c in cells))
  rows = []
  for model in models:
    mine = [c for c in cells if c.model == model]
    for metric in task_metrics(task):
      values = np.asarray(
        [c.test_metrics[metric] for c in mine if c.test_metrics.get(metric) is not None], dtype=np.float64
      )
      rows.append(
        {
          "model": model,
          "task": task,
          "metric": metric,
          "mean": float(values.mean()) if values.size else float("nan"),
          "std": float(values.std(ddof=1)) if values.size > 1 else float("nan"),
          "n_folds": int(values.size),
        }
      )
  return pd.DataFrame(rows, columns=list(RESULT_COLUMNS))


def predictions_frame(cells: Sequence[CellResult]) -> pd.DataFrame:
  """One row per (model, fold, seed, test slide) with the run's prediction columns."""
  rows = [{"model": c.model, "fold": c.fold, "seed": c.seed, **p} for c in cells for p in c.predictions]
  frame = pd.DataFrame(rows)
  if frame.empty:
    return pd.DataFrame(columns=["model", "fold", "seed", "slide_id", "patient_id"])
  return frame


def _fmt_params(n: Optional[int]) -> str:
  if n is None:
    return "n/a"
  return f"{n / 1e6:.2f}M" if n >= 1e6 else (f"{n / 1e3:.1f}k" if n >= 1e3 else str(n))


def _fmt_mean_std(mean: float, std: float) -> str:
  if math.isnan(mean):
    return "n/a"
  return f"{mean:.3f}" if math.isnan(std) else f"{mean:.3f} ± {std:.3f}"


def markdown_table(
  results: pd.DataFrame, cells: Sequence[CellResult], task: str, models: Optional[Sequence[str]] = None
) -> str:
  """One row per model: mean ± std (test, selected on val) per metric, params, throughput."""
  models = list(models) if models is not None else list(dict.fromkeys(results["model"]))
  metrics = task_metrics(task)
  head = ["model", *metrics, "cells", "params", "train slides/s", "s / cell"]
  lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
  for model in models:
    mine = [c for c in cells if c.model == model]
    scores = []
    for metric in metrics:
      row = results[(results["model"] == model) & (results["metric"] == metric)]
      scores.append("n/a" if row.empty else _fmt_mean_std(float(row["mean"].iloc[0]), float(row["std"].iloc[0])))
    params = next((c.n_params for c in mine if c.n_params is not None), None)
    speed = [c.slides_per_s for c in mine if c.slides_per_s is not None]
    wall = [c.wall_s for c in mine if c.wall_s is not None]
    lines.append(
      "| "
      + " | ".join(
        [
          model,
          *scores,
          str(len(mine)),
          _fmt_params(params),
          f"{np.median(speed):.1f}" if speed else "n/a",
          f"{np.mean(wall):.0f}" if wall else "n/a",
        ]
      )
      + " |"
    )
  return "\n".join(lines) + "\n"


def write_comparison(
  out_dir: str | pathlib.Path,
  task: str,
  cells: Sequence[CellResult],
  models: Optional[Sequence[str]] = None,
  header: str = "",
) -> dict[str, pathlib.Path]:
  """Writes results.csv, results.md and predictions.csv under out_dir; returns their paths."""
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  results = aggregate(cells, task, models)
  paths = {
    "results": out_dir / "results.csv",
    "markdown": out_dir / "results.md",
    "predictions": out_dir / "predictions.csv",
  }
  results.to_csv(paths["results"], index=False)
  table = markdown_table(results, cells, task, models)
  paths["markdown"].write_text((header.rstrip() + "\n\n" if header else "") + table)
  predictions_frame(cells).to_csv(paths["predictions"], index=False)
  return paths
