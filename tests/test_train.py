"""The training system end to end on a tiny synthetic cohort: selection, resumption, run dirs."""

import json
import shutil

import pytest
from _tiny import TINY_EPOCHS, TINY_MODEL, cli_args, tiny_config, tiny_layer

from experiments import run as run_cli
from smml_jax.train.config import ConfigError, make_config
from smml_jax.train.loop import RunDirError, train

# One worker trains the session's tiny run and the runs that reuse its compiled programs.
pytestmark = pytest.mark.xdist_group("tiny_run")


@pytest.fixture
def tiny_spec(tiny_cohort):
  return tiny_cohort[0]


@pytest.fixture
def data_dir(tiny_cohort):
  return tiny_cohort[1]


@pytest.fixture
def full_run(tiny_run):
  """(run dir, summary) of the session's tiny run (conftest.tiny_run; read-only)."""
  return tiny_run.out, tiny_run.summary


def _jsonl(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_run_directory_records(full_run):
  out, summary = full_run
  for name in (
    "config.json",
    "preprocessor.json",
    "cohort.json",
    "metrics.jsonl",
    "summary.json",
    "predictions_test.jsonl",
    "predictions_val.jsonl",
  ):
    assert (out / name).is_file(), name
  assert (out / "checkpoints" / "latest").is_dir() and (out / "checkpoints" / "best").is_dir()
  assert json.loads((out / "summary.json").read_text()) == summary
  rows = _jsonl(out / "metrics.jsonl")
  assert {r["split"] for r in rows} == {"train", "val", "test"}
  assert sorted({r["epoch"] for r in rows}) == [0, 1, 2]


@pytest.mark.slow
def test_best_epoch_is_chosen_on_validation(full_run):
  out, summary = full_run
  rows = _jsonl(out / "metrics.jsonl")
  val = {r["epoch"]: r["auc"] for r in rows if r["split"] == "val"}
  assert summary["best_epoch"] == max(val, key=lambda e: (val[e], -e))
  test_rows = {r["epoch"]: r for r in rows if r["split"] == "test"}
  assert summary["test"] == test_rows[summary["best_epoch"]]
  assert 0.0 <= summary["test"]["auc"] <= 1.0


@pytest.mark.slow
def test_resume_ends_with_exactly_the_uninterrupted_metrics(full_run, tiny_spec, data_dir, tmp_path):
  _, summary = full_run
  config = tiny_config(tiny_spec, data_dir)
  out = tmp_path / "resumed"
  partial = train(config, out, stop_after_epoch=0, log=lambda _: None)
  assert partial == {"stopped_after_epoch": 0}
  assert not (out / "summary.json").exists()
  resumed = train(config, out, resume=True, log=lambda _: None)
  assert resumed == summary  # bit for bit: same seed, same data order, same RNG stream
  untimed = lambda rows: [
    {k: v for k, v in r.items() if k not in ("slides_per_s", "compile_s")} for r in rows
  ]  # compile_s: the epoch where this process compiled
  assert untimed(_jsonl(out / "metrics.jsonl")) == untimed(_jsonl(full_run[0] / "metrics.jsonl"))


def _params(out, kind, step):
  import orbax.checkpoint as ocp

  return ocp.StandardCheckpointer().restore(out / "checkpoints" / kind / str(step) / "state")


@pytest.mark.slow
def test_resume_mid_epoch_continues_at_the_next_batch_bit_for_bit(full_run, tiny_spec, data_dir, tmp_path):
  import dataclasses

  import jax
  import numpy as np

  full_out, summary = full_run
  steps_per_epoch = next(
    r["step"] for r in _jsonl(full_out / "metrics.jsonl") if r["split"] == "train" and r["epoch"] == 0
  )
  assert steps_per_epoch >= 4
  config = tiny_config(tiny_spec, data_dir)
  config = dataclasses.replace(config, impl=dataclasses.replace(config.impl, checkpoint_every_steps=2))
  out = tmp_path / "mid_epoch"
  stop = steps_per_epoch + 3  # in the second epoch, at most one step past a checkpoint
  assert train(config, out, stop_after_step=stop, log=lambda _: None) == {"stopped_after_step": stop}
  saved = stop - stop % 2
  assert [p.name for p in (out / "checkpoints" / "partial").iterdir()] == [str(saved)]
  logs = []
  resumed = train(config, out, resume=True, log=logs.append)
  assert any(
    f"at train step {saved} (epoch 1, batch {saved - steps_per_epoch} of {steps_per_epoch})" in line for line in logs
  ), logs
  assert resumed == summary  # the same batches in the same order, the same RNG stream
  untimed = lambda rows: [{k: v for k, v in r.items() if k not in ("slides_per_s", "compile_s")} for r in rows]
  assert untimed(_jsonl(out / "metrics.jsonl")) == untimed(_jsonl(full_out / "metrics.jsonl"))
  last = config.train.epochs - 1
  for got, want in zip(
    jax.tree.leaves(_params(out, "latest", last)), jax.tree.leaves(_params(full_out, "latest", last))
  ):
    np.testing.assert_array_equal(got, want)
  assert list((out / "checkpoints" / "partial").iterdir()) == []  # superseded at epoch ends


@pytest.mark.slow
def test_resume_falls_back_past_a_corrupted_checkpoint_to_the_same_metrics(full_run, tiny_spec, data_dir, tmp_path):
  _, summary = full_run
  config = tiny_config(tiny_spec, data_dir)
  out = tmp_path / "corrupted"
  train(config, out, stop_after_epoch=1, log=lambda _: None)
  step_dir = out / "checkpoints" / "latest" / "1"
  victim = max((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  victim.write_bytes(victim.read_bytes()[:100])  # truncated, e.g. by a full disk
  logs = []
  resumed = train(config, out, resume=True, log=logs.append)
  assert any("latest/1" in line and str(victim) in line for line in logs), logs
  assert any("resumed" in line and "after epoch 0" in line for line in logs), logs
  assert resumed == summary  # epoch 1 trained again from epoch 0's checkpoint, identically


@pytest.mark.slow
def test_run_directory_holding_another_run_is_refused(full_run, tiny_spec, data_dir, tmp_path):
  out = shutil.copytree(full_run[0], tmp_path / "full")
  with pytest.raises(RunDirError, match="--resume"):
    train(tiny_config(tiny_spec, data_dir), out, log=lambda _: None)
  with pytest.raises(RunDirError, match="train.epochs"):
    train(tiny_config(tiny_spec, data_dir, epochs=5), out, resume=True, log=lambda _: None)


@pytest.mark.slow
def test_survival_run(tiny_spec, data_dir, tmp_path):
  summary = train(tiny_config(tiny_spec, data_dir, task="survival", epochs=1), tmp_path / "s", log=lambda _: None)
  assert summary["selection_metric"] == "c_index"
  assert 0.0 <= summary["test"]["c_index"] <= 1.0
  rows = _jsonl(tmp_path / "s" / "predictions_test.jsonl")
  assert {"risk", "time", "event", "hazard_0"} <= set(rows[0])


@pytest.mark.slow
def test_cli_prints_a_table_and_rejects_bad_config(tiny_spec, data_dir, tmp_path, capsys):
  args = cli_args(tiny_spec, tmp_path / "cli", data_dir, task="subtype")
  assert run_cli.main(args) == 0
  out = capsys.readouterr().out
  assert "best epoch" in out and "auc" in out and "balanced_accuracy" in out
  assert run_cli.main(args) == 2  # the directory now holds a run
  assert "--resume" in capsys.readouterr().err
  assert run_cli.main(args + ["--overwrite", "--set", "train.epochz=1"]) == 2
  assert "train.epochz" in capsys.readouterr().err


@pytest.mark.parametrize(
  "override, message",
  [
    ("model=nope", "unknown model"),
    ("train.coordination=maybe", "train.coordination"),
    ("optim.learning_rate=fast", "optim.learning_rate"),
    ("task=staging", "task"),
  ],
)
def test_config_errors_name_the_key(override, message, tiny_spec, data_dir, tmp_path):
  with pytest.raises((ConfigError, ValueError), match=message):
    config = make_config({"data": {"data": str(tiny_spec), "data_dir": data_dir}}, overrides=[override])
    train(config, tmp_path / "bad", log=lambda _: None)


def test_summary_records_what_ran(full_run):
  _, summary = full_run
  record = summary["implementation"]
  assert record["platform"] == "cpu"
  assert record["attention"] in ("native", "fused")  # `auto` resolved for the mesh's devices
  assert record["depthwise"] == ("native" if record["attention"] == "native" else "selection")


def test_resume_accepts_changed_implementation_knobs(tiny_spec, data_dir, tmp_path):
  """`impl` is how, not what: changing it does not make --resume refuse; a model option does."""
  out = tmp_path / "impl"
  # The session run's length, so the first epoch compiles nothing new (the persistent cache).
  layer = lambda model, impl: {**tiny_layer(tiny_spec, data_dir), "model_options": model, "impl": impl}
  train(make_config(layer(TINY_MODEL, {})), out, stop_after_epoch=0, log=lambda _: None)
  changed = make_config(layer(TINY_MODEL, {"attention": "reference", "sampler": "matmul", "query_tile": 16}))
  summary = train(changed, out, resume=True, log=lambda _: None)
  assert summary["implementation"]["attention"] == "reference"
  assert summary["implementation"]["depthwise"] == "selection"
  assert json.loads((out / "config.json").read_text())["impl"]["attention"] == "reference"
  other_model = make_config(layer({**TINY_MODEL, "cpb_hidden": 16}, {}))
  with pytest.raises(RunDirError, match="model_options.cpb_hidden"):
    train(other_model, out, resume=True, log=lambda _: None)


def test_run_writes_tensorboard_scalars_and_a_log_file(full_run):
  from smml_jax.train import events

  out, summary = full_run
  scalars = events.read_scalars(out / events.EVENTS_DIR)
  steps = [s for s, _ in scalars["train/loss"]]
  assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 3  # every optimiser step
  for tag in (
    "train/task_loss",
    "train/consistency_tumour",
    "train/consistency_micro",
    "train/grad_norm",
    "train/learning_rate",
    "train/score_tumour",
    "train/score_micro",
    "train/coordination_edited",
    "val/auc",
    "val/accuracy",
  ):
    assert tag in scalars, f"{tag} missing; have {sorted(scalars)}"
  assert all(0.0 <= v <= 1.0 for _, v in scalars["train/coordination_edited"])
  assert any(v > 0 for _, v in scalars["train/coordination_edited"])  # it does edit rows
  rows = _jsonl(out / "metrics.jsonl")
  per_epoch = len(steps) // TINY_EPOCHS
  # The cosine is stepped per epoch (from 1e-3): constant within an epoch, then lower.
  lrs = [v for _, v in scalars["train/learning_rate"]]
  assert lrs[0] == pytest.approx(1e-3) and lrs[per_epoch] < lrs[0]
  assert len(set(lrs[:per_epoch])) == 1
  val = {r["step"]: r["auc"] for r in rows if r["split"] == "val"}
  assert dict(scalars["val/auc"]) == pytest.approx(val)
  assert "test/auc" in scalars  # recorded for the record, not shown on the console
  log = (out / events.LOG_FILE).read_text()
  assert f"epoch 0 (1/{TINY_EPOCHS})" in log and "test auc" in log


def test_console_shows_validation_per_epoch_and_test_once(tiny_run, tiny_spec, data_dir, tmp_path):
  lines, summary = list(tiny_run.lines), tiny_run.summary
  epoch_lines = [line for line in lines if line.startswith("epoch ")]
  assert len(epoch_lines) == TINY_EPOCHS
  # One numbering (0-based): the console names the epoch summary.json records.
  n = TINY_EPOCHS
  assert [line.split(":")[0] for line in epoch_lines] == [f"epoch {e} ({e + 1}/{n})" for e in range(n)]
  best = summary["best_epoch"]
  assert any(line.startswith(f"selected epoch {best} on validation") for line in lines), lines
  assert f"at epoch {best})" in epoch_lines[-1]
  assert all("val auc" in line and "test" not in line for line in epoch_lines)
  assert sum("test auc" in line for line in lines) == 1  # once, at the end
  assert any(line.startswith("compiling") for line in lines)
  lines = []
  train(tiny_config(tiny_spec, data_dir, log_test_every_epoch=True), tmp_path / "loud", log=lines.append)
  assert all("test auc" in line for line in lines if line.startswith("epoch "))
