"""TCGA GBM-LGG genomics-only comparison on the published splits.

  python -m experiments.compare_genomic --task grading --models snn,subspace-genomic,linear \
      --protocol pnas15 --data-root ../shared/data --out runs/gbmlgg-grading-pnas15

(`python -m experiments.compare --cohort tcga-gbmlgg ...` dispatches here.)

Models: `snn` (one SNN on all features), `subspace-genomic` (tumour and micro SNNs, fused and
per-subspace classifiers, gradient coordination on the fused kernel), `linear` (L2 logistic
regression / elastic-net Cox, `smml_jax.models.linear`).

Protocols (`smml_jax.data.protocols`): `pnas15`, the 15 PathomicFusion train/test splits, with a
stratified 15% of each training set held out for model selection (best epoch; the linear model's
penalty); `mcat5`, the 5 PORPOISE folds, trained for a fixed number of epochs with no selection
(the held-out fold is the test set, as in MCAT).

Source (`--source`): `auto` (default) uses the protocol's own table (`pnas` for pnas15, `porpoise`
for mcat5) unless a requested model needs microenvironment features that the table lacks: the
PNAS table has copy number only (no micro subspace), so pnas15 with `subspace-genomic` runs ALL
models on the porpoise table, restricted to the 490 patients it shares with the PNAS splits, so
every model is compared on the same patients. `--source pnas` with `subspace-genomic` is an error.

Writes to --out:
  results.csv      model, task, metric, mean, std, n_folds (sample std over split x seed cells)
  predictions.csv  model, protocol, split, seed, case_id, label, prob_0..prob_{K-1}
                   (survival: model, protocol, split, seed, case_id, time, event, risk)
  folds.csv        model, split, seed, metric, value (the per-cell metrics)
  run.json         the resolved settings, source, wall time per model, best epochs
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
from typing import Any, Sequence

import numpy as np
import pandas as pd

from smml_jax.data import protocols, tcga_gbmlgg
from smml_jax.tasks import Task, get_task

MODELS = ("snn", "subspace-genomic", "linear")
# The metrics reported per task kind (`Task.kind`).
CELL_METRICS = {"classification": ("auc", "auc_micro", "accuracy", "f1"), "survival": ("c_index",)}
RESULT_COLUMNS = ("model", "task", "metric", "mean", "std", "n_folds")
QUICK_SPLITS, QUICK_EPOCHS = 2, 2
# Epoch budget per protocol: pnas15 selects the best of them on validation; mcat5 trains them all.
# lr 1e-3 and the mcat5 budget were chosen on pnas15 VALIDATION parts only (splits 0-4, porpoise
# table: lr 5e-4 / 1e-3 / 2e-3 gave val AUC 0.84 / 0.87 / 0.87, best epochs mostly 13-30); no
# mcat5 fold and no test set was looked at.
DEFAULT_EPOCHS = {"pnas15": 40, "mcat5": 20}
DEFAULT_LEARNING_RATE = 1e-3


class CompareError(ValueError):
  """A comparison request that cannot run as asked (e.g. a model the source cannot feed)."""


def add_genomic_args(parser: argparse.ArgumentParser, *, include_common: bool = True) -> None:
  """Adds this comparison's flags. `include_common=False` skips the ones `experiments.compare`
  already defines (--task, --models, --protocol, --data-root, --out, --seeds, --quick, --epochs)."""
  if include_common:
    parser.add_argument("--task", required=True, choices=tcga_gbmlgg.TASKS)
    parser.add_argument("--models", default=",".join(MODELS),
                        help=f"comma-separated, from {MODELS}")
    parser.add_argument("--protocol", required=True, choices=sorted(protocols.PROTOCOLS))
    parser.add_argument("--data-root", required=True, help="folder laid out like ../shared/data")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default 0)")
    parser.add_argument("--quick", action="store_true",
                        help=f"CI slice: {QUICK_SPLITS} splits, {QUICK_EPOCHS} epochs")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"training epochs (default {DEFAULT_EPOCHS})")
  parser.add_argument("--source", default="auto", choices=("auto",) + tcga_gbmlgg.SOURCES,
                      help="which table feeds the models (see the module docstring)")
  parser.add_argument("--splits", default=None,
                      help="comma-separated 0-based split/fold indices (default all)")
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--learning-rate", type=float, default=DEFAULT_LEARNING_RATE)


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m experiments.compare_genomic", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  add_genomic_args(p)
  return p


def _int_list(text, what: str) -> list[int] | None:
  if text is None or (isinstance(text, str) and not text.strip()):
    return None
  if isinstance(text, (list, tuple)):
    return [int(v) for v in text]
  try:
    return [int(v) for v in str(text).split(",") if v.strip()]
  except ValueError as e:
    raise CompareError(f"--{what}: expected comma-separated integers, got {text!r}") from e


def parse_models(text) -> list[str]:
  models = list(text) if isinstance(text, (list, tuple)) else [
      m.strip() for m in str(text).split(",") if m.strip()]
  unknown = [m for m in models if m not in MODELS]
  if unknown or not models:
    raise CompareError(f"--models: unknown {unknown or text!r}; expected a comma-separated "
                       f"subset of {MODELS}")
  return models


def resolve_source(protocol: str, models: Sequence[str], source: str) -> str:
  """The table that feeds every model (see the module docstring)."""
  from smml_jax.models.genomic import NEEDS_MICRO
  needs_micro = [m for m in models if m in NEEDS_MICRO]
  if source == "auto":
    source = protocols.DEFAULT_SOURCE[protocol]
    if needs_micro and source == "pnas":
      source = "porpoise"
    return source
  if source == "pnas" and needs_micro:
    raise CompareError(f"--source pnas has no microenvironment features (copy number only), so "
                       f"{needs_micro} cannot run on it; use --source porpoise (pnas15 then runs "
                       f"on the patients the two tables share) or --source auto")
  return source


def _settings(args) -> dict[str, Any]:
  get = lambda name, default=None: getattr(args, name, default)
  protocol = get("protocol")
  if protocol not in protocols.PROTOCOLS:
    raise CompareError(f"--protocol: expected one of {sorted(protocols.PROTOCOLS)}, got {protocol!r}")
  task = get("task")
  if task not in tcga_gbmlgg.TASKS:
    raise CompareError(f"--task: expected one of {tcga_gbmlgg.TASKS}, got {task!r}")
  models = parse_models(get("models") or ",".join(MODELS))
  quick = bool(get("quick", False))
  epochs = get("epochs") or (QUICK_EPOCHS if quick else DEFAULT_EPOCHS[protocol])
  splits = _int_list(get("splits"), "splits")
  if splits is None and quick:
    splits = list(range(QUICK_SPLITS))
  n_total = protocols.NUM_PNAS_SPLITS if protocol == "pnas15" else protocols.NUM_MCAT_FOLDS
  if splits is not None and any(not 0 <= k < n_total for k in splits):
    raise CompareError(f"--splits: {protocol} has splits 0..{n_total - 1}, got {splits}")
  seeds = _int_list(get("seeds"), "seeds") or [0]
  return dict(task=task, models=models, protocol=protocol, data_root=str(get("data_root")),
              out=str(get("out")), seeds=seeds, quick=quick, epochs=int(epochs), splits=splits,
              source=resolve_source(protocol, models, get("source", "auto") or "auto"),
              batch_size=int(get("batch_size", 32) or 32),
              learning_rate=float(get("learning_rate") or DEFAULT_LEARNING_RATE))


def _split_list(settings, cohort) -> list[tuple[int, dict[str, np.ndarray]]]:
  protocol, ks = settings["protocol"], settings["splits"]
  if protocol == "pnas15":
    parts = protocols.pnas15_splits(cohort, settings["data_root"], splits=ks)
  else:
    parts = protocols.mcat5_splits(cohort, settings["data_root"], folds=ks)
  n_total = protocols.NUM_PNAS_SPLITS if protocol == "pnas15" else protocols.NUM_MCAT_FOLDS
  return list(zip(ks if ks is not None else range(n_total), parts))


def _arrays(cohort, idx, normaliser, target):
  from smml_jax.train.genomic import GenomicArrays
  genes = cohort.genes(idx, normaliser)
  return GenomicArrays(genes["genes_tumour"], genes["genes_micro"], target[idx],
                       cohort.surv_time[idx], cohort.event[idx])


def _truth(cohort, task: Task, idx=slice(None)) -> dict[str, np.ndarray]:
  """The patients' outcomes under the names `Task` reads (`cohort.label()`: the task's codes)."""
  return {task.label_field: cohort.label()[idx], "surv_time": cohort.surv_time[idx],
          "event": cohort.event[idx]}


def run_cell(model: str, cohort, split: dict[str, np.ndarray], settings, seed: int,
             split_id: int) -> tuple[np.ndarray, dict[str, Any]]:
  """Trains `model` on one split with one seed.

  Returns (test predictions: (N_test, K) probabilities or (N_test,) risk, info dict).
  """
  task, protocol = settings["task"], settings["protocol"]
  selects = protocols.SELECTS_ON_VAL[protocol]
  train_idx, val_idx, test_idx = split["train"], split["val"], split["test"]
  normaliser = cohort.fit_normaliser(train_idx)
  spec_task = get_task(task)
  if model == "linear":
    feats = lambda idx: np.concatenate(list(cohort.genes(idx, normaliser).values()), axis=1)
    y = lambda idx: spec_task.outcome(_truth(cohort, spec_task, idx))
    x_val, y_val = (feats(val_idx), y(val_idx)) if selects else (None, None)
    from smml_jax.models.linear import fit_predict_linear
    pred = fit_predict_linear(task, feats(train_idx), y(train_idx), x_val, y_val, feats(test_idx))
    return np.asarray(pred, np.float64), {}

  from smml_jax.models.genomic import build_genomic_model
  from smml_jax.train.genomic import GenomicTrainConfig, predict_logits, train_genomic
  num_classes = spec_task.num_classes
  target = spec_task.fit_target(_truth(cohort, spec_task), train_idx)
  spec = build_genomic_model(model, num_classes=num_classes,
                             n_genes_tumour=cohort.x_tumour.shape[1],
                             n_genes_micro=cohort.x_micro.shape[1])
  cfg = GenomicTrainConfig(task=task, num_classes=num_classes, epochs=settings["epochs"],
                           batch_size=settings["batch_size"],
                           learning_rate=settings["learning_rate"], select_on_val=selects)
  result = train_genomic(
      spec, cfg, _arrays(cohort, train_idx, normaliser, target),
      _arrays(cohort, val_idx, normaliser, target) if selects else None,
      seed=seed * 1000 + split_id)
  logits = predict_logits(spec, result.params, _arrays(cohort, test_idx, normaliser, target))
  return spec_task.prediction(logits).astype(np.float64), {"best_epoch": result.best_epoch}


def cell_metrics(task: Task, pred: np.ndarray, truth) -> dict[str, float]:
  """The reported metrics of one (model, split, seed) cell, from its predictions and outcomes
  (`task.truth_from_columns`)."""
  m = task.metrics(pred, truth)
  return {k: (np.nan if m[k] is None else m[k]) for k in CELL_METRICS[task.kind]}


def metrics_from_predictions(predictions: pd.DataFrame, task: str) -> pd.DataFrame:
  """Per-cell metrics (model, split, seed, metric, value) recomputed from predictions.csv rows."""
  rows = []
  spec_task = get_task(task)
  for (model, split, seed), g in predictions.groupby(["model", "split", "seed"], sort=False):
    m = cell_metrics(spec_task, spec_task.score_from_columns(g), spec_task.truth_from_columns(g))
    rows += [dict(model=model, split=int(split), seed=int(seed), metric=k, value=v)
             for k, v in m.items()]
  return pd.DataFrame(rows, columns=["model", "split", "seed", "metric", "value"])


def aggregate(folds: pd.DataFrame, task: str) -> pd.DataFrame:
  """results.csv rows: mean and sample std (ddof 1; NaN for one cell) over split x seed cells."""
  rows = []
  for (model, metric), g in folds.groupby(["model", "metric"], sort=False):
    v = g["value"].to_numpy(np.float64)
    v = v[~np.isnan(v)]
    rows.append(dict(model=model, task=task, metric=metric,
                     mean=float(v.mean()) if v.size else np.nan,
                     std=float(v.std(ddof=1)) if v.size > 1 else np.nan, n_folds=int(v.size)))
  return pd.DataFrame(rows, columns=list(RESULT_COLUMNS))


def _prediction_rows(model, settings, split_id, seed, cohort, test_idx, pred) -> pd.DataFrame:
  task = get_task(settings["task"])
  base = dict(model=model, protocol=settings["protocol"], split=split_id, seed=seed,
              case_id=cohort.case_ids[test_idx])
  truth = _truth(cohort, task, test_idx)
  return pd.DataFrame(dict(base, **task.truth_columns(truth), **task.score_columns(pred)))


def run_genomic_compare(args) -> int:
  """Runs the comparison described by `args` (see `add_genomic_args`); returns the exit code."""
  try:
    settings = _settings(args)
  except CompareError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  out = pathlib.Path(settings["out"])
  out.mkdir(parents=True, exist_ok=True)
  task = settings["task"]
  cohort = tcga_gbmlgg.load_gbmlgg(settings["data_root"], settings["source"], task)
  splits = _split_list(settings, cohort)
  print(f"tcga-gbmlgg {task} / {settings['protocol']} on source {settings['source']}: "
        f"{cohort.x_tumour.shape[1]} tumour + {cohort.x_micro.shape[1]} micro features, "
        f"{len(splits)} splits x {len(settings['seeds'])} seeds, epochs {settings['epochs']}",
        flush=True)
  predictions, timing, best_epochs = [], {}, {}
  for model in settings["models"]:
    start = time.perf_counter()
    for split_id, split in splits:
      for seed in settings["seeds"]:
        pred, info = run_cell(model, cohort, split, settings, seed, split_id)
        predictions.append(_prediction_rows(model, settings, split_id, seed, cohort,
                                            split["test"], pred))
        if "best_epoch" in info:
          best_epochs.setdefault(model, []).append(info["best_epoch"])
    timing[model] = round(time.perf_counter() - start, 2)
    print(f"  {model}: {timing[model]:.1f} s", flush=True)
  predictions = pd.concat(predictions, ignore_index=True)
  folds = metrics_from_predictions(predictions, task)
  results = aggregate(folds, task)
  predictions.to_csv(out / "predictions.csv", index=False)
  folds.to_csv(out / "folds.csv", index=False)
  results.to_csv(out / "results.csv", index=False)
  run = dict(settings, n_patients=int(cohort.num_patients),
             n_tumour_features=int(cohort.x_tumour.shape[1]),
             n_micro_features=int(cohort.x_micro.shape[1]),
             wall_time_s=timing, best_epochs=best_epochs)
  (out / "run.json").write_text(json.dumps(run, indent=2))
  with pd.option_context("display.width", 120, "display.precision", 4):
    print(results.to_string(index=False))
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  return run_genomic_compare(build_parser().parse_args(argv))


if __name__ == "__main__":
  sys.exit(main())
