"""The training loop: the epochs over grain batches prefetched to the mesh, per-epoch evaluation,
selection on validation, checkpoints (at epoch ends and, with `impl.checkpoint_every_steps`,
within epochs, with the pipeline's position), exact resumption and the run directory's records.

Building the experiment is `train/experiment.py`; predictions, metrics and the summary are
`train/results.py` (both re-exported here)."""

from __future__ import annotations

import dataclasses
import math
import pathlib
import time
from typing import Any, Callable, Optional

import jax
import numpy as np
from tqdm import tqdm

from smml_jax.data import missing, pipeline
from smml_jax.models.registry import implementations
from smml_jax.optim.factory import epoch_schedule
from smml_jax.train import distributed, epoch as epoch_lib, events as events_lib, run_dir, sharding
from smml_jax.train import teacher as teacher_lib
from smml_jax.train.checkpoints import RunCheckpoints
from smml_jax.train.config import ConfigError, RunConfig, config_to_dict
from smml_jax.train.epoch import TrainingDiverged, epoch_label  # noqa: F401  (re-exported)

# Re-exported: callers build experiments and predict through the loop module. The noqa sits after
# "(" so that it covers every name, also once `ruff format` puts one per line.
from smml_jax.train.experiment import (  # noqa: F401
  Experiment,
  batches,
  build_experiment,
  check_grid_side,
  global_batch,
  init_state,
  selection_metric,
  task_of,
)
from smml_jax.train.results import (  # noqa: F401
  fmt,
  is_main_process,
  mean,
  predict,
  prediction_rows,
  split_metrics,
  summarise,
)
from smml_jax.train.run_dir import RunDirError  # noqa: F401  (re-exported for callers)
from smml_jax.train.steps import make_eval_step, make_train_step

DEFAULT_KEEP_CHECKPOINTS = 2


def check_run_dir(out_dir: pathlib.Path, config: RunConfig, *, resume: bool, overwrite: bool) -> str:
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
      log(
        f"--overwrite: removed the previous run's {[p.name for p in removed]} from {out_dir}"
        + (f"; kept {kept}" if kept else "")
      )
  distributed.barrier("prepare_run_dir:ready")


def _write_jsonl(path: pathlib.Path, rows: list[dict]) -> None:
  if is_main_process():
    run_dir.write_jsonl(path, rows)


def _check_finite(
  metrics: dict, step: int, epoch: int, batch: int, steps_per_epoch: int, ckpts: RunCheckpoints
) -> None:
  """TrainingDiverged when a step's loss parts or gradient norm are not finite."""
  if bool(metrics["finite"]):
    return
  values = {k: float(v) for k, v in metrics.items() if k != "finite"}  # loss parts, grad norm
  bad = ", ".join(f"{k}={v}" for k, v in values.items() if not math.isfinite(v))
  newest = ckpts.newest()
  raise TrainingDiverged(
    f"training diverged at step {step} (epoch {epoch}, batch {batch} of {steps_per_epoch}):"
    f" non-finite {bad}. Last good checkpoint: "
    + (newest if newest else "none (it diverged in the first epoch)")
    + "; nothing after it was saved. Lower optim.learning_rate or check the inputs."
  )


def _host_rows(rows: list[dict]) -> list[dict]:
  """Per-step metrics as JSON numbers (float32 -> float is exact, so epoch means are unchanged)."""
  return [{k: bool(v) if k == "finite" else float(v) for k, v in row.items()} for row in jax.device_get(rows)]


def train(
  config: RunConfig,
  out_dir: str | pathlib.Path,
  *,
  resume: bool = False,
  overwrite: bool = False,
  stop_after_epoch: Optional[int] = None,
  mesh=None,
  keep_checkpoints: int = DEFAULT_KEEP_CHECKPOINTS,
  log: Callable[[str], None] = print,
  stop_after_step: Optional[int] = None,
) -> dict[str, Any]:
  """Trains, evaluates every epoch, keeps the best epoch by VALIDATION metric.

  Everything is validated (run directory, config, cohort, model, batch size) before `out_dir`
  is touched; see `smml_jax.train.run_dir` for what is written when.

  Args:
    config: the resolved RunConfig.
    out_dir: run directory (config.json, metrics.jsonl, checkpoints/, summary.json, ...).
    resume: continue from the newest intact checkpoint in out_dir (same config required; a
      mid-epoch one, see `impl.checkpoint_every_steps`, continues at the very next batch); with
      no run in out_dir the run starts fresh (and says so).
    overwrite: replace the run in out_dir (its own files only; a foreign folder is refused).
    stop_after_epoch: return after this epoch (0-based) as if interrupted (used by tests).
    stop_after_step: return after this train step (1-based) as if interrupted (used by tests).
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
    raise ConfigError(f"--keep-checkpoints (keep_checkpoints): expected at least 1, got {keep_checkpoints}")
  mode = check_run_dir(out_dir, config, resume=resume, overwrite=overwrite)
  exp = build_experiment(config, mesh)
  batch_size = global_batch(config.train.batch_size, exp.mesh)
  steps_per_epoch = len(batches(exp, "train", batch_size, train=True))
  if steps_per_epoch == 0:
    raise ConfigError(f"batch size {batch_size} exceeds the {len(exp.splits['train'])} training slides")
  state, tx = init_state(exp, steps_per_epoch)
  cohort_record = {
    "path": str(exp.cohort.path),
    "grid_side": exp.cohort.grid_side,
    "feature_dim": exp.cohort.feature_dim,
    "gene_names": exp.cohort.gene_names,
    "spec": run_dir.cohort_spec_record(config.data.data),
    "splits": {k: exp.cohort.slides["slide_id"].to_numpy()[v].tolist() for k, v in exp.splits.items()},
    "expression": missing.expression_record(exp.cohort, exp.splits, exp.dropped, config.data.drop_expression),
  }
  teacher = teacher_lib.for_experiment(exp, cohort_record)  # checked against this split

  absent = cohort_record["expression"]
  if any(absent["without_expression"].values()) or absent["dropped_slides"]:
    log(
      f"expression: {len(absent['dropped_slides'])} training slide(s) dropped "
      f"(data.drop_expression {config.data.drop_expression}); slides without expression in "
      f"the cohort, per split: {absent['without_expression']}"
    )
  # Everything is validated: only now is the run directory touched.
  if resume and mode == run_dir.NEW:
    log(f"--resume: {out_dir} holds no run yet; starting a fresh run")
  prepare_run_dir(out_dir, mode, log)
  if is_main_process():
    run_dir.write_start(out_dir, config, exp.preprocessor.to_json(), cohort_record)

  schedule = epoch_schedule(dataclasses.replace(config.optim, epochs=config.train.epochs), steps_per_epoch)
  train_step = make_train_step(exp.spec, tx, exp.loss_config, learning_rate=schedule, teacher=teacher, mesh=exp.mesh)
  eval_step = make_eval_step(exp.spec, mesh=exp.mesh)
  ckpts = RunCheckpoints(out_dir / run_dir.CHECKPOINTS_DIR, keep=keep_checkpoints)
  metric = selection_metric(config)
  history: list[dict] = []
  best = {"epoch": -1, "value": -math.inf}
  start_epoch, position = 0, None  # position: where a mid-epoch checkpoint left the epoch
  if mode == run_dir.RESUME:
    restored = ckpts.restore_for_resume(state, log=log)
    if restored is not None:
      state, meta = restored
      state = sharding.replicate(state, exp.mesh)
      history, best, start_epoch = meta["history"], meta["best"], meta["epoch"] + 1
      if meta.get("epoch_rows"):
        start_epoch, position = meta["epoch"], {**meta["data"], "rows": meta["epoch_rows"]}
        log(
          f"resumed {out_dir} at train step {int(state.step)} (epoch {start_epoch}, batch "
          f"{len(position['rows'])} of {steps_per_epoch})"
        )
      else:
        log(f"resumed {out_dir} after epoch {meta['epoch']}")
    else:
      log(f"--resume: {out_dir} holds no intact checkpoint; training from the first epoch")
  _write_jsonl(out_dir / run_dir.METRICS_FILE, history)
  show = config.train.progress and is_main_process()
  # print() would tear the progress bar; tqdm.write prints above it.
  console = tqdm.write if log is print else log
  done_in_epoch = len(position["rows"]) if position else 0  # its steps are logged again
  events = events_lib.RunEvents(
    out_dir,
    enabled=is_main_process(),
    purge_step=int(state.step) - done_in_epoch + 1 if start_epoch or position else None,
  )

  def say(message: str) -> None:
    console(message)
    events.info(message)

  def evaluate(epoch: int, step: int) -> dict[str, dict]:
    results = {}
    for part in ("val", "test"):
      preds = predict(exp, state.params, part, eval_step, progress=show)
      results[part] = (split_metrics(exp, preds), preds)
    for part, (m, _) in results.items():
      history.append(
        {"epoch": epoch, "step": step, "split": part, **{k: v for k, v in m.items() if not isinstance(v, (list, dict))}}
      )
      events.evaluation(step, part, m)
    _write_jsonl(out_dir / run_dir.METRICS_FILE, history)
    events.flush()
    return results

  step = int(state.step)  # 1-based count of train steps done, kept on the host
  total_steps = steps_per_epoch * (config.train.epochs - start_epoch) - done_in_epoch
  bar = tqdm(total=total_steps, desc="training", unit="step", disable=not show, dynamic_ncols=True)
  compiled = False
  try:
    for epoch in range(start_epoch, config.train.epochs):
      bar.set_description(epoch_label(epoch, config.train.epochs))
      t0, seen, compile_s, losses = time.perf_counter(), 0, None, []
      iterator = pipeline.prefetch_to_device(
        batches(exp, "train", batch_size, epoch=epoch, train=True),
        put=lambda batch: sharding.shard_batch(batch, exp.mesh),
      )
      train_rows, logged = [], 0
      if position is not None:  # continue the interrupted epoch at its next batch
        iterator.set_state(position["iterator"])
        train_rows, position = list(position["rows"]), None
      first_step = step - len(train_rows)

      def log_steps(rows: list, first: int, logged: int) -> int:
        """Host copies of the steps not yet in the event file; returns how many are logged."""
        if events.enabled:
          for i, row in enumerate(jax.device_get(rows[logged:]), start=logged):
            events.train_step(first + i + 1, row)
        return len(rows)

      if not compiled:
        say(f"compiling the train step ({exp.config.model}, batch {batch_size}) ...")
      for stepped, m in epoch_lib.epoch_steps(train_step, state, iterator):  # sharded by grain
        state = stepped  # evaluate() and the checkpoints read the latest state
        step += 1
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
          _check_finite(train_rows[-2], step - 1, epoch, len(train_rows) - 1, steps_per_epoch, ckpts)
        if len(train_rows) % 5 == 0:
          losses = [float(r["loss"]) for r in train_rows[-5:]]
          logged = log_steps(train_rows, first_step, logged)
          bar.set_postfix(loss=f"{mean(losses):.4f}", slides_per_s=f"{seen / (time.perf_counter() - t0):.1f}")
        if config.train.eval_every_steps and step % config.train.eval_every_steps == 0:
          _check_finite(m, step, epoch, len(train_rows), steps_per_epoch, ckpts)
          evaluate(epoch, step)
        if (
          config.impl.checkpoint_every_steps
          and step % config.impl.checkpoint_every_steps == 0
          and len(train_rows) < steps_per_epoch
        ):  # the epoch's end saves its own
          _check_finite(m, step, epoch, len(train_rows), steps_per_epoch, ckpts)
          ckpts.save_partial(
            step,
            state,
            {
              "epoch": epoch,
              "history": history,
              "best": best,
              "config": config_to_dict(config),
              "epoch_rows": _host_rows(train_rows),
            },
            {"epoch": epoch, "iterator": iterator.get_state()},
          )
        if stop_after_step is not None and step >= stop_after_step:
          pipeline.close(iterator)
          events.close()
          return {"stopped_after_step": step}
      pipeline.close(iterator)
      _check_finite(train_rows[-1], step, epoch, len(train_rows), steps_per_epoch, ckpts)
      logged = log_steps(train_rows, first_step, logged)
      train_time = time.perf_counter() - t0
      timed = (seen - batch_size, train_time - compile_s) if compile_s and seen > batch_size else (seen, train_time)
      history.append(
        {
          "epoch": epoch,
          "step": step,
          "split": "train",
          **{k: mean([r[k] for r in train_rows]) for k in train_rows[0] if k != "finite"},
          "step_losses": [float(r["loss"]) for r in train_rows],
          "slides_per_s": timed[0] / timed[1],
          **({"compile_s": compile_s} if compile_s is not None else {}),
        }
      )
      results = evaluate(epoch, step)
      val_value = results["val"][0].get(metric)
      improved = val_value is not None and not math.isnan(val_value) and val_value > best["value"]
      if improved:
        best = {"epoch": epoch, "value": float(val_value)}
      meta = {"epoch": epoch, "history": history, "best": best, "config": config_to_dict(config)}
      data = {"epoch": epoch + 1, "iterator": None}  # the next epoch, from its first batch
      if improved:
        ckpts.save_best(epoch, state, meta, data)
        for part in run_dir.PREDICTION_SPLITS:
          _write_jsonl(
            out_dir / run_dir.predictions_file(part), prediction_rows(results[part][1], exp.loss_config.task)
          )
      ckpts.save_latest(epoch, state, meta, data)
      line = (
        f"{epoch_label(epoch, config.train.epochs)}: loss {history[-3]['loss']:.4f}  val "
        f"{metric} {fmt(val_value)}  "
        + (
          f"(best {fmt(best['value'])} at epoch {best['epoch']})"
          if best["epoch"] >= 0
          else "(no finite validation value yet)"
        )
      )
      test_part = f"  test {metric} {fmt(results['test'][0].get(metric))}"
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
  say(f"selected epoch {best['epoch']} on validation {metric} {fmt(val_value)}; test {metric} {fmt(test_value)}")
  events.close()
  return summary
