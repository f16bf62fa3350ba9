"""The training loop: data, model, optimiser, per-epoch evaluation, selection on validation,
checkpoints, resumption and the run directory's records."""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import shutil
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from smml_jax.data import normalise, splits as splits_lib
from smml_jax.data.pipeline import BatchIterator
from smml_jax.data.spec import load_cohort, read_spec
from smml_jax.models.registry import ModelSpec, build_model
from smml_jax.optim.coordination import coordinate_gradients
from smml_jax.optim.factory import make_optimizer, trainable_mask_from_predicate
from smml_jax.tasks import Task, get_task
from smml_jax.train import distributed, sharding
from smml_jax.train.checkpoints import RunCheckpoints
from smml_jax.train.config import (ConfigError, RunConfig, config_difference, config_from_dict,
                                   config_to_dict)
from smml_jax.train.state import TrainState
from smml_jax.train.steps import LossConfig, make_eval_step, make_train_step, model_inputs

CONFIG_FILE, METRICS_FILE, SUMMARY_FILE = "config.json", "metrics.jsonl", "summary.json"
PREPROCESSOR_FILE, COHORT_FILE = "preprocessor.json", "cohort.json"


class RunDirError(ValueError):
  """The run directory holds a different run."""


def is_main_process() -> bool:
  return jax.process_index() == 0


def task_of(config: RunConfig) -> Task:
  """The run's task: its name, number of outputs and survival NLL weight."""
  return get_task(config.task, config.num_classes, survival_alpha=config.train.survival_alpha)


def selection_metric(config: RunConfig) -> str:
  if config.train.selection_metric != "auto":
    return config.train.selection_metric
  return task_of(config).selection_metric


def prepare_run_dir(out_dir: pathlib.Path, config: RunConfig, *, resume: bool,
                    overwrite: bool) -> None:
  """Refuses a directory that holds another run unless --resume (same config) or --overwrite.

  Collective: every process checks before process 0 changes anything, and all leave together.
  """
  config_path = out_dir / CONFIG_FILE
  exists = config_path.exists()
  distributed.barrier("prepare_run_dir:checked")
  if exists:
    if overwrite:
      if is_main_process():
        shutil.rmtree(out_dir)
    elif not resume:
      raise RunDirError(f"{out_dir} already holds a run; pass --resume to continue it or "
                        "--overwrite to replace it")
    else:
      stored = json.loads(config_path.read_text())
      if stored != config_to_dict(config):
        diff = config_difference(stored, config_to_dict(config))
        raise RunDirError(f"{out_dir} holds a run with a different config ({diff}); "
                          "--resume needs the same config (or use another --out)")
  if is_main_process():
    out_dir.mkdir(parents=True, exist_ok=True)
  distributed.barrier("prepare_run_dir:ready")


@dataclasses.dataclass
class Experiment:
  """Everything built from a config before training: data, preprocessing, model, optimiser."""
  config: RunConfig
  cohort: Any
  splits: dict[str, np.ndarray]
  preprocessor: normalise.Preprocessor
  spec: ModelSpec
  loss_config: LossConfig
  mesh: Any


def _labelled(cohort, indices: np.ndarray, task: Task) -> np.ndarray:
  """The slides of `indices` that carry the task's label (survival: a known time)."""
  return np.asarray(indices)[task.labelled(cohort.slides)[indices]]


def build_experiment(config: RunConfig, mesh=None) -> Experiment:
  d = config.data
  with distributed.main_process_first("build_cohort"):  # one writer of the shared record cache
    cohort = load_cohort(d.data, d.data_dir)
  parts = splits_lib.make_splits(cohort, d.split, seed=d.split_seed, fold=d.fold,
                                 n_folds=d.n_folds, stratify=d.stratify,
                                 val_fraction=d.val_fraction, test_fraction=d.test_fraction,
                                 split_file=d.split_file)
  splits_lib.assert_patient_disjoint(cohort, parts)
  task = task_of(config)
  parts = {k: _labelled(cohort, v, task) for k, v in parts.items()}
  for part, idx in parts.items():
    if not len(idx):
      raise ConfigError(f"the {part} split has no slide labelled for task {config.task!r}")
  preprocessor = normalise.fit_preprocessor(
      cohort, parts["train"], gene_transform=d.gene_transform, survival_cuts=d.survival_cuts,
      clip=d.gene_clip)
  spec = build_model(config.model, num_classes=config.num_classes,
                     n_genes_tumour=cohort.n_genes_tumour, n_genes_micro=cohort.n_genes_micro,
                     feature_dim=cohort.feature_dim, options=config.model_options)
  if config.train.compute_dtype == "bfloat16":
    if not hasattr(spec.module, "dtype"):
      raise ConfigError(f"model {config.model!r} has no compute dtype option")
    spec = dataclasses.replace(spec, module=spec.module.clone(dtype=jnp.bfloat16))
  t = config.train
  class_weights = task.class_weights(t.class_weights, cohort.slides.iloc[parts["train"]])
  loss_config = LossConfig(task=task, class_weights=class_weights,
                           consistency_weight=t.consistency_weight,
                           consistency_mode=t.consistency_mode,
                           coordination=spec.coordination and t.coordination != "none")
  return Experiment(config, cohort, parts, preprocessor, spec, loss_config,
                    mesh if mesh is not None else sharding.make_mesh())


def _iterator(exp: Experiment, part: str, batch_size: int, *, epoch: int = 0,
              train: bool = False) -> BatchIterator:
  return BatchIterator(exp.cohort.source, exp.splits[part], batch_size, seed=exp.config.train.seed,
                       epoch=epoch, shuffle=train, drop_remainder=train,
                       preprocess=exp.preprocessor, process_index=jax.process_index(),
                       process_count=jax.process_count())


def _global_batch(size: int, mesh) -> int:
  """Rounds a batch size up to a multiple of the mesh size (every device gets a shard)."""
  n = mesh.devices.size
  return int(math.ceil(size / n) * n)


def init_state(exp: Experiment, steps_per_epoch: int):
  """(TrainState, optimiser) from the config's seed."""
  cfg = exp.config
  key = jax.random.PRNGKey(cfg.train.seed)
  init_key, dropout_key, state_key = jax.random.split(key, 3)
  sample = next(iter(_iterator(exp, "train", _global_batch(cfg.train.batch_size, exp.mesh))))
  inputs = {k: jnp.asarray(v[:1]) for k, v in model_inputs(sample).items()}
  params = exp.spec.module.init({"params": init_key, "dropout": dropout_key}, inputs)["params"]
  frozen = exp.spec.frozen
  trainable = trainable_mask_from_predicate(
      lambda path, leaf: not any(path.startswith(f) for f in frozen)) if frozen else None
  coordination = None
  if exp.loss_config.coordination:
    coordination = coordinate_gradients(exp.spec.splits, mode=cfg.train.coordination)
  optim = dataclasses.replace(cfg.optim, epochs=cfg.train.epochs)
  tx = make_optimizer(optim, steps_per_epoch=steps_per_epoch, trainable=trainable,
                      coordination=coordination)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                     rng=state_key)
  return sharding.replicate(state, exp.mesh), tx


def predict(exp: Experiment, params, part: str, eval_step=None) -> dict[str, np.ndarray]:
  """Eval-mode outputs over a whole split, gathered on the host, padding removed."""
  eval_step = eval_step or make_eval_step(exp.spec)
  bs = _global_batch(exp.config.train.eval_batch_size, exp.mesh)
  chunks: dict[str, list] = {}
  for batch in _iterator(exp, part, bs):
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
  return task.metrics(task.prediction(logits), preds,
                      train={k: train[k].to_numpy() for k in ("surv_time", "event")},
                      bin_times=np.asarray(exp.preprocessor.surv_cuts), logits=logits)


def _mean(values: list) -> float:
  return float(np.mean([float(v) for v in values])) if values else float("nan")


def _write_jsonl(path: pathlib.Path, rows: list[dict]) -> None:
  if is_main_process():
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _prediction_rows(preds: dict[str, np.ndarray], task: Task) -> list[dict[str, Any]]:
  columns = {"slide_id": preds["slide_id"], "patient_id": preds["patient_id"],
             **task.truth_columns(preds), **task.prediction_columns(preds["logits"])}
  return [{k: v[i].item() if isinstance(v[i], np.generic) else v[i] for k, v in columns.items()}
          for i in range(len(preds["slide_id"]))]


def train(config: RunConfig, out_dir: str | pathlib.Path, *, resume: bool = False,
          overwrite: bool = False, stop_after_epoch: Optional[int] = None, mesh=None,
          log: Callable[[str], None] = print) -> dict[str, Any]:
  """Trains, evaluates every epoch, keeps the best epoch by VALIDATION metric.

  Args:
    config: the resolved RunConfig.
    out_dir: run directory (config.json, metrics.jsonl, checkpoints/, summary.json, ...).
    resume: continue from the latest checkpoint in out_dir (same config required).
    overwrite: replace whatever out_dir holds.
    stop_after_epoch: return after this epoch (0-based) as if interrupted (used by tests).
    mesh: device mesh; default all devices.

  Returns:
    The summary dict (also written to summary.json when the run completes).
  """
  out_dir = pathlib.Path(out_dir)
  prepare_run_dir(out_dir, config, resume=resume, overwrite=overwrite)
  exp = build_experiment(config, mesh)
  if is_main_process():
    (out_dir / CONFIG_FILE).write_text(json.dumps(config_to_dict(config), indent=2))
    (out_dir / PREPROCESSOR_FILE).write_text(exp.preprocessor.to_json())
    (out_dir / COHORT_FILE).write_text(json.dumps({
        "path": str(exp.cohort.path), "grid_side": exp.cohort.grid_side,
        "feature_dim": exp.cohort.feature_dim, "gene_names": exp.cohort.gene_names,
        "spec": _cohort_spec(config.data.data),
        "splits": {k: exp.cohort.slides["slide_id"].to_numpy()[v].tolist()
                   for k, v in exp.splits.items()}}, indent=1))

  batch_size = _global_batch(config.train.batch_size, exp.mesh)
  steps_per_epoch = len(_iterator(exp, "train", batch_size, train=True))
  if steps_per_epoch == 0:
    raise ConfigError(f"batch size {batch_size} exceeds the {len(exp.splits['train'])} training "
                      "slides")
  state, tx = init_state(exp, steps_per_epoch)
  train_step = make_train_step(exp.spec, tx, exp.loss_config)
  eval_step = make_eval_step(exp.spec)
  ckpts = RunCheckpoints(out_dir / "checkpoints")
  metric = selection_metric(config)
  history: list[dict] = []
  best = {"epoch": -1, "value": -math.inf}
  start_epoch = 0
  if resume:
    restored = ckpts.restore_latest(state)
    if restored is not None:
      state, meta = restored
      state = sharding.replicate(state, exp.mesh)
      history, best, start_epoch = meta["history"], meta["best"], meta["epoch"] + 1
      log(f"resumed {out_dir} after epoch {meta['epoch']}")
  _write_jsonl(out_dir / METRICS_FILE, history)

  def evaluate(epoch: int, step: int) -> dict[str, dict]:
    results = {}
    for part in ("val", "test"):
      preds = predict(exp, state.params, part, eval_step)
      results[part] = (split_metrics(exp, preds), preds)
    for part, (m, _) in results.items():
      history.append({"epoch": epoch, "step": step, "split": part,
                      **{k: v for k, v in m.items() if not isinstance(v, (list, dict))}})
    _write_jsonl(out_dir / METRICS_FILE, history)
    return results

  for epoch in range(start_epoch, config.train.epochs):
    t0, seen, losses = time.perf_counter(), 0, []
    iterator = _iterator(exp, "train", batch_size, epoch=epoch, train=True)
    bar = tqdm(iterator, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{config.train.epochs}",
               disable=not (config.train.progress and is_main_process()), leave=False)
    train_rows = []
    for batch in bar:
      state, m = train_step(state, sharding.shard_batch(batch, exp.mesh))
      seen += batch_size
      train_rows.append(m)
      if len(train_rows) % 5 == 0:
        losses = [float(r["loss"]) for r in train_rows[-5:]]
        bar.set_postfix(loss=f"{_mean(losses):.4f}",
                        slides_per_s=f"{seen / (time.perf_counter() - t0):.1f}")
      if (config.train.eval_every_steps and int(state.step) % config.train.eval_every_steps == 0):
        evaluate(epoch, int(state.step))
    train_time = time.perf_counter() - t0
    history.append({"epoch": epoch, "step": int(state.step), "split": "train",
                    **{k: _mean([r[k] for r in train_rows]) for k in train_rows[0]},
                    "step_losses": [float(r["loss"]) for r in train_rows],
                    "slides_per_s": seen / train_time})
    results = evaluate(epoch, int(state.step))
    val_value = results["val"][0].get(metric)
    improved = val_value is not None and not math.isnan(val_value) and val_value > best["value"]
    if improved:
      best = {"epoch": epoch, "value": float(val_value)}
    meta = {"epoch": epoch, "history": history, "best": best,
            "config": config_to_dict(config)}
    if improved:
      ckpts.save_best(epoch, state, meta)
      _write_jsonl(out_dir / "predictions_test.jsonl",
                   _prediction_rows(results["test"][1], exp.loss_config.task))
      _write_jsonl(out_dir / "predictions_val.jsonl",
                   _prediction_rows(results["val"][1], exp.loss_config.task))
    ckpts.save_latest(epoch, state, meta)
    log(f"epoch {epoch + 1}: loss {history[-3]['loss']:.4f}  val {metric} "
        f"{_fmt(val_value)}  test {metric} {_fmt(results['test'][0].get(metric))}  "
        f"({train_time:.1f}s, {seen / train_time:.1f} slides/s)")
    if stop_after_epoch is not None and epoch >= stop_after_epoch:
      ckpts.close()
      return {"stopped_after_epoch": epoch}
  ckpts.close()
  summary = summarise(config, history, best)
  summary["n_params"] = int(sum(np.size(x) for x in jax.tree.leaves(state.params)))
  if is_main_process():
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
  return summary


def _cohort_spec(data: str) -> dict[str, Any]:
  """The cohort spec (how slides were read: grid layout, HDF5 datasets), kept for inference."""
  if str(data) == "synthetic":
    return {"layout": "synthetic"}
  return read_spec(data)


def _fmt(v) -> str:
  return "n/a" if v is None else f"{v:.4f}"


def summarise(config: RunConfig, history: list[dict], best: dict) -> dict[str, Any]:
  """Validation-selected epoch and its val/test metrics."""
  at = lambda part, epoch: next((r for r in history if r["split"] == part and r["epoch"] == epoch
                                 and r["step"] == max(x["step"] for x in history
                                                      if x["epoch"] == epoch)), None)
  last = max(r["epoch"] for r in history)
  return {"task": config.task, "model": config.model, "seed": config.train.seed,
          "selection_metric": selection_metric(config), "best_epoch": best["epoch"],
          "val": at("val", best["epoch"]), "test": at("test", best["epoch"]),
          "last_epoch": {"epoch": last, "val": at("val", last), "test": at("test", last)}}


def load_run_config(out_dir: str | pathlib.Path) -> RunConfig:
  return config_from_dict(json.loads((pathlib.Path(out_dir) / CONFIG_FILE).read_text()))
