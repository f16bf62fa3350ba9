"""TensorBoard event files (no TensorFlow) and the run's log file: written, then read back."""

import logging

import numpy as np
import pytest

from smml_jax.train import events


def test_scalars_round_trip_through_an_event_file(tmp_path):
  writer = events.RunEvents(tmp_path)
  for step in range(1, 4):
    writer.train_step(step, {"loss": np.float32(1.0 / step), "grad_norm": 2.0 * step, "learning_rate": 1e-3})
  writer.evaluation(3, "val", {"auc": 0.75, "confusion_matrix": [[1, 0], [0, 1]], "c_index_ipcw": None})
  writer.info("epoch 1: done")
  writer.close()
  scalars = events.read_scalars(tmp_path / events.EVENTS_DIR)
  assert scalars["train/loss"] == [(1, pytest.approx(1.0)), (2, pytest.approx(0.5)), (3, pytest.approx(1 / 3))]
  assert [s for s, _ in scalars["train/grad_norm"]] == [1, 2, 3]
  assert scalars["val/auc"] == [(3, pytest.approx(0.75))]
  assert not any("confusion" in tag or "ipcw" in tag for tag in scalars)  # not scalars
  log = (tmp_path / events.LOG_FILE).read_text()
  assert "epoch 1: done" in log


def test_resume_purges_the_steps_after_the_checkpoint(tmp_path):
  writer = events.RunEvents(tmp_path)
  for step in range(1, 6):
    writer.train_step(step, {"loss": float(step)})
  writer.close()
  resumed = events.RunEvents(tmp_path, purge_step=3)  # the checkpoint is at step 2
  for step in range(3, 5):
    writer_value = 10.0 * step
    resumed.train_step(step, {"loss": writer_value})
  resumed.close()
  losses = dict(events.read_scalars(tmp_path / events.EVENTS_DIR)["train/loss"])
  assert losses == {1: 1.0, 2: 2.0, 3: 30.0, 4: 40.0}  # old steps 3-5 dropped


def test_a_nan_scalar_is_written_not_dropped(tmp_path):
  writer = events.RunEvents(tmp_path)
  writer.train_step(1, {"loss": float("nan")})
  writer.close()
  ((step, value),) = events.read_scalars(tmp_path / events.EVENTS_DIR)["train/loss"]
  assert step == 1 and np.isnan(value)


def test_disabled_writer_writes_nothing_and_handlers_are_released(tmp_path):
  quiet = events.RunEvents(tmp_path / "off", enabled=False)
  quiet.train_step(1, {"loss": 1.0})
  quiet.info("nothing")
  quiet.close()
  assert not (tmp_path / "off").exists()
  before = len(logging.getLogger(events.LOGGER).handlers)
  writer = events.RunEvents(tmp_path / "on")
  writer.close()
  assert len(logging.getLogger(events.LOGGER).handlers) == before


def test_log_lines_go_to_the_file_not_twice_to_the_console(tmp_path, capfd):
  root = logging.getLogger()
  handler = logging.StreamHandler()  # what a library's logging.basicConfig() installs
  root.addHandler(handler)
  try:
    writer = events.RunEvents(tmp_path)
    writer.info("epoch 1/3: loss 0.5")
    writer.close()
  finally:
    root.removeHandler(handler)
  out, err = capfd.readouterr()
  assert "epoch 1/3" not in out + err
  assert "epoch 1/3: loss 0.5" in (tmp_path / events.LOG_FILE).read_text()


def test_corrupt_event_file_is_named(tmp_path):
  folder = tmp_path / events.EVENTS_DIR
  folder.mkdir()
  (folder / "events.out.tfevents.1.x").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00abc")
  with pytest.raises(ValueError, match="events.out.tfevents.1.x"):
    events.read_scalars(folder)


def test_a_run_that_never_closed_does_not_capture_the_next_runs_lines(tmp_path):
  crashed = events.RunEvents(tmp_path / "crashed")
  crashed.info("first run")  # ... and it raised before close()
  writer = events.RunEvents(tmp_path / "next")
  writer.info("second run")
  writer.close()
  assert "second run" not in (tmp_path / "crashed" / events.LOG_FILE).read_text()
  assert "second run" in (tmp_path / "next" / events.LOG_FILE).read_text()
