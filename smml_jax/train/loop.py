"""The training loop: data, model, optimiser, per-epoch evaluation, selection on validation,
checkpoints, resumption and the run directory's records."""

from __future__ import annotations

import dataclasses
import math
import pathlib
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from smml_jax.data import missing, normalise, splits as splits_lib
from smml_jax.data.pipeline import BatchIterator
from smml_jax.data.spec import load_cohort
from smml_jax.models.deform_attention import (DeformAttentionConfig, min_grid_side,
                                              offset_grid_side)
from smml_jax.models.registry import ModelSpec, build_model, implementations
from smml_jax.ops import dispatch
from smml_jax.optim.coordination import coordinate_gradients
from smml_jax.optim.factory import epoch_schedule, make_optimizer, trainable_mask_from_predicate
from smml_jax.tasks import Task, get_task
from smml_jax.train import distributed, events as events_lib, run_dir, sharding
from smml_jax.train.checkpoints import RunCheckpoints
from smml_jax.train.config import ConfigError, RunConfig, config_to_dict
from smml_jax.train.run_dir import RunDirError  # noqa: F401  (re-exported for callers)
from smml_jax.train.state import TrainState
from smml_jax.train.steps import LossConfig, make_eval_step, make_train_step, model_inputs

DEFAULT_KEEP_CHECKPOINTS = 2


class TrainingDiverged(RuntimeError):
  """A non-finite loss or gradient: the run cannot train further."""


def is_main_process() -> bool:
  return jax.process_index() == 0


def task_of(config: RunConfig) -> Task:
  """The run's task: its name, number of outputs and survival NLL weight."""
  return get_task(config.task, config.num_classes, survival_alpha=config.train.survival_alpha,
                  coordination_score=config.train.coordination_score)


def selection_metric(config: RunConfig) -> str:
  if config.train.selection_metric != "auto":
    return config.train.selection_metric
  return task_of(config).selection_metric


def check_run_dir(out_dir: pathlib.Path, config: RunConfig, *, resume: bool,
                  overwrite: bool) -> str:
  """`run_dir.check` on every process (read-only); all leave together."""
  try:
    mode = run_dir.check(out_dir, config, resume=resume, overwrite=overwrite)
  finally:
    distributed.barrier("check_run_dir")
  return mode


def prepare_run_dir(out_dir: pathlib.Path, mode: str, log: Callable[[str], None]) -> None:
  """Process 0 makes the folder ready (`run_dir.prepare`); collective."""
  if is_main_process():
    removed = run_dir.prepare(out_dir, mode)
    if removed:
      kept = run_dir.foreign_entries(out_dir)
      log(f"--overwrite: removed the previous run's {[p.name for p in removed]} from {out_dir}"
          + (f"; kept {kept}" if kept else ""))
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
  dropped: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
  # Some slide of the run has no expression (or has it dropped): batches carry has_expression.
  masked: bool = False


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
  dropped = missing.dropped_slides(cohort, parts["train"], d.drop_expression, config.train.seed)
  preprocessor = normalise.fit_preprocessor(
      cohort, parts["train"], gene_transform=d.gene_transform, survival_cuts=d.survival_cuts,
      clip=d.gene_clip, absent=dropped)
  mesh = mesh if mesh is not None else sharding.make_mesh()
  impl = dict(config.impl.model_options(), platform=dispatch.platform_of(mesh))
  try:
    spec = build_model(config.model, num_classes=config.num_classes,
                       n_genes_tumour=cohort.n_genes_tumour, n_genes_micro=cohort.n_genes_micro,
                       feature_dim=cohort.feature_dim, options=config.model_options, impl=impl)
  except dispatch.DispatchError as e:
    raise ConfigError(f"config key 'impl.attention': {e}") from e
  except (TypeError, ValueError) as e:  # unknown model, unknown or ill-typed model_options
    raise ConfigError(f"config key 'model' / 'model_options': {e}") from e
  check_grid_side(spec, cohort.grid_side, config)
  if config.train.compute_dtype == "bfloat16":
    if not hasattr(spec.module, "dtype"):
      raise ConfigError(f"model {config.model!r} has no compute dtype option")
    spec = dataclasses.replace(spec, module=spec.module.clone(dtype=jnp.bfloat16))
  try:  # e.g. 'native' on a TPU mesh: refused before anything is traced
    implementations(spec)
  except dispatch.DispatchError as e:
    raise ConfigError(f"config key 'impl.attention': {e}") from e
  t = config.train
  class_weights = task.class_weights(t.class_weights, cohort.slides.iloc[parts["train"]])
  loss_config = LossConfig(task=task, class_weights=class_weights,
                           consistency_weight=t.consistency_weight,
                           consistency_mode=t.consistency_mode,
                           coordination=spec.coordination and t.coordination != "none")
  masked = bool(len(dropped)) or not all(normalise.has_expression(cohort, v).all()
                                          for v in parts.values())
  return Experiment(config, cohort, parts, preprocessor, spec, loss_config, mesh, dropped, masked)


def check_grid_side(spec: ModelSpec, grid_side: int, config: RunConfig) -> None:
  """ConfigError when the cohort's grid is too small for the deformable attention's lattice."""
  attention = getattr(getattr(getattr(spec.module, "config", None), "branch", None), "attention",
                      None)
  if not isinstance(attention, DeformAttentionConfig):
    return
  minimum = min_grid_side(attention.offset_kernel, attention.downsample)
  tokens = grid_side if attention.ndim == 2 else grid_side * grid_side
  if tokens < minimum:
    lattice = offset_grid_side(tokens, attention.offset_kernel, attention.downsample)
    raise ConfigError(
        f"cohort {config.data.data}: grid_side {grid_side} is too small for model "
        f"{config.model!r}: its deformable attention's offset lattice (kernel "
        f"{attention.offset_kernel}, stride {attention.downsample}) would have {max(lattice, 0)} "
        f"point(s) per side and needs at least 2, i.e. a "
        f"{'grid_side' if attention.ndim == 2 else 'token count (grid_side^2)'} of at least "
        f"{minimum}")


def _iterator(exp: Experiment, part: str, batch_size: int, *, epoch: int = 0,
              train: bool = False) -> BatchIterator:
  preprocess = exp.preprocessor
  if part == "train" and len(exp.dropped):  # data.drop_expression: training patients only
    ids = exp.cohort.slides["slide_id"].to_numpy()[exp.dropped]
    preprocess = missing.DropExpression(frozenset(ids.astype(str)), preprocess)
  if not exp.masked:  # every slide has expression: the unmasked model, as before
    preprocess = missing.WithoutPresence(preprocess)
  return BatchIterator(exp.cohort.source, exp.splits[part], batch_size, seed=exp.config.train.seed,
                       epoch=epoch, shuffle=train, drop_remainder=train,
                       preprocess=preprocess, process_index=jax.process_index(),
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


def predict(exp: Experiment, params, part: str, eval_step=None,
            progress: bool = False) -> dict[str, np.ndarray]:
  """Eval-mode outputs over a whole split, gathered on the host, padding removed."""
  eval_step = eval_step or make_eval_step(exp.spec)
  bs = _global_batch(exp.config.train.eval_batch_size, exp.mesh)
  chunks: dict[str, list] = {}
  batches = _iterator(exp, part, bs)
  for batch in tqdm(batches, total=len(batches), desc=f"evaluating {part}", leave=False,
                    disable=not (progress and is_main_process())):
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
    run_dir.write_jsonl(path, rows)


def _prediction_rows(preds: dict[str, np.ndarray], task: Task) -> list[dict[str, Any]]:
  columns = {"slide_id": preds["slide_id"], "patient_id": preds["patient_id"],
             **task.truth_columns(preds), **task.prediction_columns(preds["logits"])}
  return [{k: v[i].item() if isinstance(v[i], np.generic) else v[i] for k, v in columns.items()}
          for i in range(len(preds["slide_id"]))]


def _check_finite(metrics: dict, step: int, epoch: int, batch: int, steps_per_epoch: int,
                  ckpts: RunCheckpoints) -> None:
  """TrainingDiverged when a step's loss parts or gradient norm are not finite."""
  if bool(metrics["finite"]):
    return
  values = {k: float(v) for k, v in metrics.items() if k != "finite"}  # loss parts, grad norm
  bad = ", ".join(f"{k}={v}" for k, v in values.items() if not math.isfinite(v))
  newest = ckpts.newest()
  raise TrainingDiverged(
      f"training diverged at step {step} (epoch {epoch + 1}, batch {batch} of {steps_per_epoch}):"
      f" non-finite {bad}. Last good checkpoint: "
      + (newest if newest else "none (it diverged in the first epoch)")
      + "; nothing after it was saved. Lower optim.learning_rate or check the inputs.")


def train(config: RunConfig, out_dir: str | pathlib.Path, *, resume: bool = False,
          overwrite: bool = False, stop_after_epoch: Optional[int] = None, mesh=None,
          keep_checkpoints: int = DEFAULT_KEEP_CHECKPOINTS,
          log: Callable[[str], None] = print) -> dict[str, Any]:
  """Trains, evaluates every epoch, keeps the best epoch by VALIDATION metric.

  Everything is validated (run directory, config, cohort, model, batch size) before `out_dir`
  is touched; see `smml_jax.train.run_dir` for what is written when.

  Args:
    config: the resolved RunConfig.
    out_dir: run directory (config.json, metrics.jsonl, checkpoints/, summary.json, ...).
    resume: continue from the newest intact checkpoint in out_dir (same config required); with
      no run in out_dir the run starts fresh (and says so).
    overwrite: replace the run in out_dir (its own files only; a foreign folder is refused).
    stop_after_epoch: return after this epoch (0-based) as if interrupted (used by tests).
    mesh: device mesh; default all devices.
    keep_checkpoints: how many of the latest epochs' checkpoints are kept (plus the best).

  Returns:
    The summary dict (also written to summary.json when the run completes).

  Raises:
    RunDirError, ConfigError, CohortError: refused before anything is written.
    TrainingDiverged: a non-finite loss or gradient (names the step and the last checkpoint).
  """
  out_dir = pathlib.Path(out_dir)
  if keep_checkpoints < 1:
    raise ConfigError(f"--keep-checkpoints (keep_checkpoints): expected at least 1, got "
                      f"{keep_checkpoints}")
  mode = check_run_dir(out_dir, config, resume=resume, overwrite=overwrite)
  exp = build_experiment(config, mesh)
  batch_size = _global_batch(config.train.batch_size, exp.mesh)
  steps_per_epoch = len(_iterator(exp, "train", batch_size, train=True))
  if steps_per_epoch == 0:
    raise ConfigError(f"batch size {batch_size} exceeds the {len(exp.splits['train'])} training "
                      "slides")
  state, tx = init_state(exp, steps_per_epoch)
  cohort_record = {
      "path": str(exp.cohort.path), "grid_side": exp.cohort.grid_side,
      "feature_dim": exp.cohort.feature_dim, "gene_names": exp.cohort.gene_names,
      "spec": run_dir.cohort_spec_record(config.data.data),
      "splits": {k: exp.cohort.slides["slide_id"].to_numpy()[v].tolist()
                 for k, v in exp.splits.items()},
      "expression": missing.expression_record(exp.cohort, exp.splits, exp.dropped,
                                              config.data.drop_expression)}

  absent = cohort_record["expression"]
  if any(absent["without_expression"].values()) or absent["dropped_slides"]:
    log(f"expression: {len(absent['dropped_slides'])} training slide(s) dropped "
        f"(data.drop_expression {config.data.drop_expression}); slides without expression in "
        f"the cohort, per split: {absent['without_expression']}")
  # Everything is validated: only now is the run directory touched.
  if resume and mode == run_dir.NEW:
    log(f"--resume: {out_dir} holds no run yet; starting a fresh run")
  prepare_run_dir(out_dir, mode, log)
  if is_main_process():
    run_dir.write_start(out_dir, config, exp.preprocessor.to_json(), cohort_record)

  schedule = epoch_schedule(dataclasses.replace(config.optim, epochs=config.train.epochs),
                            steps_per_epoch)
  train_step = make_train_step(exp.spec, tx, exp.loss_config, learning_rate=schedule)
  eval_step = make_eval_step(exp.spec)
  ckpts = RunCheckpoints(out_dir / run_dir.CHECKPOINTS_DIR, keep=keep_checkpoints)
  metric = selection_metric(config)
  history: list[dict] = []
  best = {"epoch": -1, "value": -math.inf}
  start_epoch = 0
  if mode == run_dir.RESUME:
    restored = ckpts.restore_for_resume(state, log=log)
    if restored is not None:
      state, meta = restored
      state = sharding.replicate(state, exp.mesh)
      history, best, start_epoch = meta["history"], meta["best"], meta["epoch"] + 1
      log(f"resumed {out_dir} after epoch {meta['epoch'] + 1}")
    else:
      log(f"--resume: {out_dir} holds no intact checkpoint; training from the first epoch")
  _write_jsonl(out_dir / run_dir.METRICS_FILE, history)
  show = config.train.progress and is_main_process()
  # print() would tear the progress bar; tqdm.write prints above it.
  console = tqdm.write if log is print else log
  events = events_lib.RunEvents(out_dir, enabled=is_main_process(),
                                purge_step=int(state.step) + 1 if start_epoch else None)

  def say(message: str) -> None:
    console(message)
    events.info(message)

  def evaluate(epoch: int, step: int) -> dict[str, dict]:
    results = {}
    for part in ("val", "test"):
      preds = predict(exp, state.params, part, eval_step, progress=show)
      results[part] = (split_metrics(exp, preds), preds)
    for part, (m, _) in results.items():
      history.append({"epoch": epoch, "step": step, "split": part,
                      **{k: v for k, v in m.items() if not isinstance(v, (list, dict))}})
      events.evaluation(step, part, m)
    _write_jsonl(out_dir / run_dir.METRICS_FILE, history)
    events.flush()
    return results

  step = int(state.step)  # 1-based count of train steps done, kept on the host
  total_steps = steps_per_epoch * (config.train.epochs - start_epoch)
  bar = tqdm(total=total_steps, desc="training", unit="step", disable=not show, dynamic_ncols=True)
  compiled = False
  try:
    for epoch in range(start_epoch, config.train.epochs):
      bar.set_description(f"epoch {epoch + 1}/{config.train.epochs}")
      t0, seen, compile_s, losses = time.perf_counter(), 0, None, []
      first_step = step
      iterator = _iterator(exp, "train", batch_size, epoch=epoch, train=True)
      train_rows, logged = [], 0

      def log_steps(rows: list, first: int, logged: int) -> int:
        """Host copies of the steps not yet in the event file; returns how many are logged."""
        if events.enabled:
          for i, row in enumerate(jax.device_get(rows[logged:]), start=logged):
            events.train_step(first + i + 1, row)
        return len(rows)

      for batch in iterator:
        if not compiled:
          say(f"compiling the train step ({exp.config.model}, batch {batch_size}) ...")
        step += 1
        state, m = train_step(state, sharding.shard_batch(batch, exp.mesh))
        seen += batch_size
        train_rows.append(m)
        if not compiled:  # time the first step alone: compilation is not throughput
          jax.block_until_ready(m)
          compile_s = time.perf_counter() - t0
          compiled = True
          say(f"compiled and ran the first step in {compile_s:.1f}s")
        bar.update(1)
        # The previous step's flag: checking it here keeps one step in flight.
        if len(train_rows) > 1:
          _check_finite(train_rows[-2], step - 1, epoch, len(train_rows) - 1, steps_per_epoch,
                        ckpts)
        if len(train_rows) % 5 == 0:
          losses = [float(r["loss"]) for r in train_rows[-5:]]
          logged = log_steps(train_rows, first_step, logged)
          bar.set_postfix(loss=f"{_mean(losses):.4f}",
                          slides_per_s=f"{seen / (time.perf_counter() - t0):.1f}")
        if (config.train.eval_every_steps and step % config.train.eval_every_steps == 0):
          _check_finite(m, step, epoch, len(train_rows), steps_per_epoch, ckpts)
          evaluate(epoch, step)
      _check_finite(train_rows[-1], step, epoch, len(train_rows), steps_per_epoch, ckpts)
      logged = log_steps(train_rows, first_step, logged)
      train_time = time.perf_counter() - t0
      timed = (seen - batch_size, train_time - compile_s) if compile_s and seen > batch_size else (
          seen, train_time)
      history.append({"epoch": epoch, "step": step, "split": "train",
                      **{k: _mean([r[k] for r in train_rows]) for k in train_rows[0]
                         if k != "finite"},
                      "step_losses": [float(r["loss"]) for r in train_rows],
                      "slides_per_s": timed[0] / timed[1],
                      **({"compile_s": compile_s} if compile_s is not None else {})})
      results = evaluate(epoch, step)
      val_value = results["val"][0].get(metric)
      improved = val_value is not None and not math.isnan(val_value) and val_value > best["value"]
      if improved:
        best = {"epoch": epoch, "value": float(val_value)}
      meta = {"epoch": epoch, "history": history, "best": best,
              "config": config_to_dict(config)}
      if improved:
        ckpts.save_best(epoch, state, meta)
        for part in run_dir.PREDICTION_SPLITS:
          _write_jsonl(out_dir / run_dir.predictions_file(part),
                       _prediction_rows(results[part][1], exp.loss_config.task))
      ckpts.save_latest(epoch, state, meta)
      line = (f"epoch {epoch + 1}/{config.train.epochs}: loss {history[-3]['loss']:.4f}  val "
              f"{metric} {_fmt(val_value)}  (best "
              f"{_fmt(best['value'] if best['epoch'] >= 0 else None)} at epoch {best['epoch'] + 1})")
      test_part = f"  test {metric} {_fmt(results['test'][0].get(metric))}"
      speed = f"  ({train_time:.1f}s, {timed[0] / timed[1]:.1f} slides/s)"
      console(line + (test_part if config.train.log_test_every_epoch else "") + speed)
      events.info(line + test_part + speed)
      if stop_after_epoch is not None and epoch >= stop_after_epoch:
        events.close()
        return {"stopped_after_epoch": epoch}
  except BaseException:
    events.close()  # a later run in this process must not write into this run's log
    raise
  finally:
    bar.close()
    ckpts.close()
  summary = summarise(config, history, best)
  summary["n_params"] = int(sum(np.size(x) for x in jax.tree.leaves(state.params)))
  summary["implementation"] = implementations(exp.spec)  # what ran: platform, attention, conv
  if is_main_process():
    run_dir.write_json(out_dir / run_dir.SUMMARY_FILE, summary)
  val_value, test_value = ((summary[p] or {}).get(metric) for p in ("val", "test"))
  say(f"selected epoch {best['epoch'] + 1} on validation {metric} {_fmt(val_value)}; "
      f"test {metric} {_fmt(test_value)}")
  events.close()
  return summary


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
