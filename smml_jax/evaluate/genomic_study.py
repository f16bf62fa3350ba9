"""The TCGA GBM-LGG genomics-only study: models x published splits x seeds -> result tables.

Models: `snn` (one SNN on all features), `subspace-genomic` (tumour and micro SNNs, fused and
per-subspace classifiers, gradient coordination on the fused kernel), both trained by
`train.in_memory.fit` (the slide runs' train step, loss, optimiser and Task); `linear` (L2
logistic regression / elastic-net Cox, `models.linear`).

Protocols (`data.splits`): `pnas15` selects the epoch (and the linear model's penalty) on a
stratified 15% of each training set; `mcat5` trains a fixed number of epochs with no selection (the
held-out fold is the test set, as in MCAT). Epochs are 0-based: run.json's `best_epochs` are in
[0, epochs).

Source: `auto` uses the protocol's own table (`pnas` for pnas15, `porpoise` for mcat5) unless a
requested model needs microenvironment features the table lacks: then every model runs on the
porpoise table (for pnas15: the 490 patients it shares with the PNAS splits).

Writes to `out` (only after the settings, cohort and splits are validated):
  results.csv      model, task, metric, mean, std, n_folds (sample std over split x seed cells)
  predictions.csv  model, protocol, split, seed, case_id, label, prob_0..prob_{K-1}
                   (survival: model, protocol, split, seed, case_id, time, event, risk)
  folds.csv        model, split, seed, metric, value (the per-cell metrics)
  run.json         the resolved settings, source, wall time per model, best epochs (0-based)
"""

from __future__ import annotations

import json
import math
import pathlib
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from smml_jax.data import splits as splits_lib, tcga_gbmlgg
from smml_jax.data.patient_arrays import GenomicArrays
from smml_jax.models.genomic import NEEDS_MICRO, build_genomic_model
from smml_jax.optim.factory import OptimConfig
from smml_jax.tasks import Task, get_task
from smml_jax.train import in_memory
from smml_jax.train.steps import LossConfig

MODELS = ("snn", "subspace-genomic", "linear")
# The metrics reported per task kind (`Task.kind`).
CELL_METRICS = {"classification": ("auc", "auc_micro", "accuracy", "f1"), "survival": ("c_index",)}
RESULT_COLUMNS = ("model", "task", "metric", "mean", "std", "n_folds")
QUICK_SPLITS, QUICK_EPOCHS = 2, 2
# Epoch budget per protocol: pnas15 selects the best of them on validation; mcat5 trains them all.
# lr 1e-3 and the mcat5 budget were chosen on pnas15 VALIDATION parts only (splits 0-4, porpoise
# table: lr 5e-4 / 1e-3 / 2e-3 gave val AUC 0.84 / 0.87 / 0.87, best epochs mostly 12-29
# (0-based)); no mcat5 fold and no test set was looked at.
DEFAULT_EPOCHS = {"pnas15": 40, "mcat5": 20}
DEFAULT_LEARNING_RATE = 1e-3
DEFAULT_BATCH_SIZE = 32
WEIGHT_DECAY = 1e-4  # coupled L2 (Adam), as PathomicFusion's SNN
COORDINATION_MODE = "pcgrad"


class CompareError(ValueError):
  """A study request that cannot run as asked (e.g. a model the source cannot feed)."""


def _int_list(text, what: str) -> list[int] | None:
  if text is None or (isinstance(text, str) and not text.strip()):
    return None
  if isinstance(text, (list, tuple)):
    return [int(v) for v in text]
  try:
    return [int(v) for v in str(text).split(",") if v.strip()]
  except ValueError as e:
    raise CompareError(f"--{what}: expected comma-separated integers, got {text!r}") from e


def _given(value, default):
  return default if value is None else value


def parse_models(text) -> list[str]:
  models = list(text) if isinstance(text, (list, tuple)) else [m.strip() for m in str(text).split(",") if m.strip()]
  unknown = [m for m in models if m not in MODELS]
  if unknown or not models:
    raise CompareError(f"--models: unknown {unknown or text!r}; expected a comma-separated subset of {MODELS}")
  return models


def resolve_source(protocol: str, models: Sequence[str], source: str) -> str:
  """The table that feeds every model (see the module docstring)."""
  needs_micro = [m for m in models if m in NEEDS_MICRO]
  if source == "auto":
    source = splits_lib.DEFAULT_SOURCE[protocol]
    return "porpoise" if needs_micro and source == "pnas" else source
  if source == "pnas" and needs_micro:
    raise CompareError(
      f"--source pnas has no microenvironment features (copy number only), so "
      f"{needs_micro} cannot run on it; use --source porpoise (pnas15 then runs "
      f"on the patients the two tables share) or --source auto"
    )
  return source


def settings_from(args: Any) -> dict[str, Any]:
  """The resolved, validated settings of a study from parsed arguments (an object with the
  CLI's attribute names; absent ones take their defaults). Raises CompareError."""
  get = lambda name, default=None: getattr(args, name, default)
  protocol = get("protocol")
  if protocol not in splits_lib.PROTOCOLS:
    raise CompareError(f"--protocol: expected one of {sorted(splits_lib.PROTOCOLS)}, got {protocol!r}")
  task = get("task")
  if task not in tcga_gbmlgg.TASKS:
    raise CompareError(f"--task: expected one of {tcga_gbmlgg.TASKS}, got {task!r}")
  if not get("data_root"):
    raise CompareError("--data-root: expected the folder holding the public TCGA tables (laid out like ../shared/data)")
  models = parse_models(get("models") or ",".join(MODELS))
  quick = bool(get("quick", False))
  # None is "not given"; 0 is a value, refused below rather than replaced by the default.
  epochs = _given(get("epochs"), QUICK_EPOCHS if quick else DEFAULT_EPOCHS[protocol])
  if int(epochs) < 1:
    raise CompareError(f"--epochs: expected at least 1, got {epochs}")
  batch_size = int(_given(get("batch_size"), DEFAULT_BATCH_SIZE))
  if batch_size < 1:
    raise CompareError(f"--batch-size: expected at least 1, got {batch_size}")
  learning_rate = float(_given(get("learning_rate"), DEFAULT_LEARNING_RATE))
  if not (math.isfinite(learning_rate) and learning_rate > 0):
    raise CompareError(f"--learning-rate: expected a positive number, got {learning_rate}")
  splits = _int_list(get("splits"), "splits")
  if splits is None and quick:
    splits = list(range(QUICK_SPLITS))
  n_total = splits_lib.NUM_PROTOCOL_SPLITS[protocol]
  if splits is not None and any(not 0 <= k < n_total for k in splits):
    raise CompareError(f"--splits: {protocol} has splits 0..{n_total - 1}, got {splits}")
  seeds = _int_list(get("seeds"), "seeds") or [0]
  return dict(
    task=task,
    models=models,
    protocol=protocol,
    data_root=str(get("data_root")),
    out=str(get("out")),
    seeds=seeds,
    quick=quick,
    epochs=int(epochs),
    splits=splits,
    source=resolve_source(protocol, models, get("source", "auto") or "auto"),
    batch_size=batch_size,
    learning_rate=learning_rate,
  )


def _truth(cohort, task: Task, idx=slice(None)) -> dict[str, np.ndarray]:
  """The patients' outcomes under the names `Task` reads (`cohort.label()`: the task's codes)."""
  return {task.label_field: cohort.label()[idx], "surv_time": cohort.surv_time[idx], "event": cohort.event[idx]}


def _arrays(cohort, idx, normaliser, target) -> GenomicArrays:
  genes = cohort.genes(idx, normaliser)
  return GenomicArrays(
    genes["genes_tumour"], genes["genes_micro"], target[idx], cohort.surv_time[idx], cohort.event[idx]
  )


def run_cell(
  model: str, cohort, split: Mapping[str, np.ndarray], settings: Mapping[str, Any], seed: int, split_id: int
) -> tuple[np.ndarray, dict[str, Any]]:
  """Trains `model` on one split with one seed.

  Returns (test predictions: (N_test, K) probabilities or (N_test,) risk, info dict with the
  0-based `best_epoch` of the neural models).
  """
  selects = splits_lib.SELECTS_ON_VAL[settings["protocol"]]
  train_idx, val_idx, test_idx = split["train"], split["val"], split["test"]
  normaliser = cohort.fit_normaliser(train_idx)
  task = get_task(settings["task"])
  if model == "linear":
    feats = lambda idx: np.concatenate(list(cohort.genes(idx, normaliser).values()), axis=1)
    y = lambda idx: task.outcome(_truth(cohort, task, idx))
    x_val, y_val = (feats(val_idx), y(val_idx)) if selects else (None, None)
    pred = task.fit_predict_linear(feats(train_idx), y(train_idx), x_val, y_val, feats(test_idx))
    return np.asarray(pred, np.float64), {}

  target = task.fit_target(_truth(cohort, task), train_idx)
  spec = build_genomic_model(
    model, num_classes=task.num_classes, n_genes_tumour=cohort.x_tumour.shape[1], n_genes_micro=cohort.x_micro.shape[1]
  )
  train = _arrays(cohort, train_idx, normaliser, target)
  loss = LossConfig(
    task=task,
    class_weights=task.class_weights("train", train.truth(task.label_field)),
    coordination=spec.coordination,
    head_losses=True,
  )
  optim = OptimConfig(learning_rate=settings["learning_rate"], weight_decay=WEIGHT_DECAY, epochs=settings["epochs"])
  result = in_memory.fit(
    spec,
    loss,
    optim,
    train,
    _arrays(cohort, val_idx, normaliser, target) if selects else None,
    batch_size=settings["batch_size"],
    select_on_val=selects,
    coordination_mode=COORDINATION_MODE,
    seed=seed * 1000 + split_id,
  )
  logits = in_memory.predict_logits(spec, result.params, _arrays(cohort, test_idx, normaliser, target))
  return task.prediction(logits).astype(np.float64), {"best_epoch": result.best_epoch}


def cell_metrics(task: Task, pred: np.ndarray, truth) -> dict[str, float]:
  """The reported metrics of one (model, split, seed) cell, from its predictions and outcomes."""
  m = task.metrics(pred, truth)
  return {k: (np.nan if m[k] is None else m[k]) for k in CELL_METRICS[task.kind]}


def metrics_from_predictions(predictions: pd.DataFrame, task: str) -> pd.DataFrame:
  """Per-cell metrics (model, split, seed, metric, value) recomputed from predictions.csv rows."""
  rows = []
  spec_task = get_task(task)
  for (model, split, seed), g in predictions.groupby(["model", "split", "seed"], sort=False):
    m = cell_metrics(spec_task, spec_task.score_from_columns(g), spec_task.truth_from_columns(g))
    rows += [dict(model=model, split=int(split), seed=int(seed), metric=k, value=v) for k, v in m.items()]
  return pd.DataFrame(rows, columns=["model", "split", "seed", "metric", "value"])


def aggregate(folds: pd.DataFrame, task: str) -> pd.DataFrame:
  """results.csv rows: mean and sample std (ddof 1; NaN for one cell) over split x seed cells."""
  rows = []
  for (model, metric), g in folds.groupby(["model", "metric"], sort=False):
    v = g["value"].to_numpy(np.float64)
    v = v[~np.isnan(v)]
    rows.append(
      dict(
        model=model,
        task=task,
        metric=metric,
        mean=float(v.mean()) if v.size else np.nan,
        std=float(v.std(ddof=1)) if v.size > 1 else np.nan,
        n_folds=int(v.size),
      )
    )
  return pd.DataFrame(rows, columns=list(RESULT_COLUMNS))


def _prediction_rows(model, settings, split_id, seed, cohort, test_idx, pred) -> pd.DataFrame:
  task = get_task(settings["task"])
  base = dict(model=model, protocol=settings["protocol"], split=split_id, seed=seed, case_id=cohort.case_ids[test_idx])
  return pd.DataFrame(dict(base, **task.truth_columns(_truth(cohort, task, test_idx)), **task.score_columns(pred)))


def run_study(settings: Mapping[str, Any], log: Callable[[str], None] = print) -> pd.DataFrame:
  """Runs the study `settings` (from `settings_from`) and writes its tables to `settings['out']`.

  The cohort and the splits are loaded (and refused, naming the file) before `out` is created.
  Returns results.csv's table.
  """
  task = settings["task"]
  cohort = tcga_gbmlgg.load_gbmlgg(settings["data_root"], settings["source"], task)
  ks = settings["splits"]
  parts = splits_lib.protocol_splits(
    settings["protocol"],
    cohort,
    settings["data_root"],
    **({"splits": ks} if settings["protocol"] == "pnas15" else {"folds": ks}),
  )
  splits = list(zip(ks if ks is not None else range(len(parts)), parts))
  out = pathlib.Path(settings["out"])
  log(
    f"tcga-gbmlgg {task} / {settings['protocol']} on source {settings['source']}: "
    f"{cohort.x_tumour.shape[1]} tumour + {cohort.x_micro.shape[1]} micro features, "
    f"{len(splits)} splits x {len(settings['seeds'])} seeds, epochs {settings['epochs']}"
  )
  predictions, timing, best_epochs = [], {}, {}
  for model in settings["models"]:
    start = time.perf_counter()
    for split_id, split in splits:
      for seed in settings["seeds"]:
        pred, info = run_cell(model, cohort, split, settings, seed, split_id)
        predictions.append(_prediction_rows(model, settings, split_id, seed, cohort, split["test"], pred))
        if "best_epoch" in info:
          best_epochs.setdefault(model, []).append(info["best_epoch"])
    timing[model] = round(time.perf_counter() - start, 2)
    log(
      f"  {model}: {timing[model]:.1f} s"
      + (f", best epochs (0-based) {best_epochs[model]}" if model in best_epochs else "")
    )
  predictions = pd.concat(predictions, ignore_index=True)
  folds = metrics_from_predictions(predictions, task)
  results = aggregate(folds, task)
  out.mkdir(parents=True, exist_ok=True)
  predictions.to_csv(out / "predictions.csv", index=False)
  folds.to_csv(out / "folds.csv", index=False)
  results.to_csv(out / "results.csv", index=False)
  run = dict(
    settings,
    n_patients=int(cohort.num_patients),
    n_tumour_features=int(cohort.x_tumour.shape[1]),
    n_micro_features=int(cohort.x_micro.shape[1]),
    wall_time_s=timing,
    best_epochs=best_epochs,
    epoch_numbering="0-based",
  )
  (out / "run.json").write_text(json.dumps(run, indent=2))
  return results
