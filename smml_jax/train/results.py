"""A trained model's outputs over a split, their metrics, prediction rows and the run summary."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from smml_jax.tasks import Task
from smml_jax.train import sharding
from smml_jax.train.config import RunConfig
from smml_jax.train.experiment import Experiment, batches, global_batch, selection_metric
from smml_jax.train.steps import make_eval_step


def is_main_process() -> bool:
  return jax.process_index() == 0


def predict(exp: Experiment, params, part: str, eval_step=None, progress: bool = False) -> dict[str, np.ndarray]:
  """Eval-mode outputs over a whole split, gathered on the host, padding removed."""
  eval_step = eval_step or make_eval_step(exp.spec, mesh=exp.mesh)
  bs = global_batch(exp.config.train.eval_batch_size, exp.mesh)
  chunks: dict[str, list] = {}
  parts = batches(exp, part, bs)
  for batch in tqdm(
    parts, total=len(parts), desc=f"evaluating {part}", leave=False, disable=not (progress and is_main_process())
  ):
    out = eval_step(params, sharding.shard_batch(batch, exp.mesh))
    out = {k: sharding.to_host(v) for k, v in out.items()}
    mask = sharding.to_host(sharding.shard_batch({"mask": batch["mask"]}, exp.mesh)["mask"])
    host = {k: batch[k] for k in ("slide_id", "patient_id")}
    if jax.process_count() > 1:  # string ids: re-read from the cohort table below
      host = {}
    for k, v in {**out, **host}.items():
      chunks.setdefault(k, []).append(np.asarray(v)[mask] if len(v) == len(mask) else v)
  result = {k: np.concatenate(v) for k, v in chunks.items()}
  idx = exp.splits[part]
  slides = exp.cohort.slides.iloc[idx]
  result["slide_id"] = slides["slide_id"].to_numpy().astype(str)
  result["patient_id"] = slides["patient_id"].to_numpy().astype(str)
  result["index"] = np.asarray(idx)
  for field in ("grade", "diagnosis", "subtype", "surv_time", "event"):
    result[field] = slides[field].to_numpy()
  result["surv_bin"] = exp.preprocessor.survival_bins(result["surv_time"])
  return result


def split_metrics(exp: Experiment, preds: dict[str, np.ndarray]) -> dict[str, Any]:
  """Task metrics of one split's predictions (slide level)."""
  task, logits = exp.loss_config.task, preds["logits"]
  train = exp.cohort.slides.iloc[exp.splits["train"]]
  return task.metrics(
    task.prediction(logits),
    preds,
    train={k: train[k].to_numpy() for k in ("surv_time", "event")},
    bin_times=np.asarray(exp.preprocessor.surv_cuts),
    logits=logits,
  )


def mean(values: list) -> float:
  return float(np.mean([float(v) for v in values])) if values else float("nan")


def prediction_rows(preds: dict[str, np.ndarray], task: Task) -> list[dict[str, Any]]:
  columns = {
    "slide_id": preds["slide_id"],
    "patient_id": preds["patient_id"],
    **task.truth_columns(preds),
    **task.prediction_columns(preds["logits"]),
  }
  return [
    {k: v[i].item() if isinstance(v[i], np.generic) else v[i] for k, v in columns.items()}
    for i in range(len(preds["slide_id"]))
  ]


def fmt(v) -> str:
  return "n/a" if v is None else f"{v:.4f}"


def summarise(config: RunConfig, history: list[dict], best: dict) -> dict[str, Any]:
  """Validation-selected epoch and its val/test metrics."""
  at = lambda part, epoch: next(
    (
      r
      for r in history
      if r["split"] == part
      and r["epoch"] == epoch
      and r["step"] == max(x["step"] for x in history if x["epoch"] == epoch)
    ),
    None,
  )
  last = max(r["epoch"] for r in history)
  return {
    "task": config.task,
    "model": config.model,
    "seed": config.train.seed,
    "selection_metric": selection_metric(config),
    "best_epoch": best["epoch"],
    "val": at("val", best["epoch"]),
    "test": at("test", best["epoch"]),
    "last_epoch": {"epoch": last, "val": at("val", last), "test": at("test", last)},
  }
