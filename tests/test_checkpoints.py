"""Checkpoints: damaged files are named, resume falls back to the newest intact checkpoint."""

import jax.numpy as jnp
import numpy as np
import pytest

from smml_jax.train.checkpoints import CheckpointError, RunCheckpoints


def _state(value: float):
  return {"w": jnp.full((64,), value, jnp.float32), "step": jnp.asarray(int(value), jnp.int32)}


def _save_epochs(directory, epochs, keep=3):
  ckpts = RunCheckpoints(directory, keep=keep)
  for epoch in epochs:
    ckpts.save_latest(epoch, _state(epoch), {"epoch": epoch})
  ckpts.save_best(1, _state(1), {"epoch": 1})
  return ckpts


def _largest_file(step_dir):
  return max((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def test_keeps_the_last_n_latest_and_the_best(tmp_path):
  ckpts = _save_epochs(tmp_path / "checkpoints", range(5), keep=2)
  assert ckpts.steps("latest") == [3, 4]
  assert ckpts.steps("best") == [1]
  manifests = sorted(p.name for p in (tmp_path / "checkpoints" / "manifests").iterdir())
  assert manifests == ["best-1.json", "latest-3.json", "latest-4.json"]
  ckpts.close()


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_damaged_checkpoint_error_names_the_step_and_file(tmp_path, damage):
  ckpts = _save_epochs(tmp_path / "checkpoints", range(3))
  victim = _largest_file(ckpts.step_dir("latest", 2))
  data = victim.read_bytes()
  if damage == "truncate":
    victim.write_bytes(data[: len(data) // 2])
  elif damage == "flip":
    victim.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
  else:
    victim.unlink()
  with pytest.raises(CheckpointError) as err:
    ckpts.restore("latest", 2, _state(0))
  assert "latest/2" in str(err.value) and str(victim) in str(err.value)
  state, meta = ckpts.restore("latest", 1, _state(0))  # the others are untouched
  assert meta["epoch"] == 1 and np.all(np.asarray(state["w"]) == 1)
  ckpts.close()


def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path):
  ckpts = _save_epochs(tmp_path / "checkpoints", range(3))
  victim = _largest_file(ckpts.step_dir("latest", 2))
  victim.write_bytes(victim.read_bytes()[:10])
  logs = []
  state, meta = ckpts.restore_for_resume(_state(0), log=logs.append)
  assert meta["epoch"] == 1 and np.all(np.asarray(state["w"]) == 1)
  assert any("latest/2" in line and str(victim) in line for line in logs)
  assert ckpts.steps("latest") == [0, 1]  # the damaged epoch is set aside, trained again
  assert (tmp_path / "checkpoints" / "damaged" / "latest-2").is_dir()
  ckpts.save_latest(2, _state(2), {"epoch": 2})  # and its step can be saved anew
  assert ckpts.restore("latest", 2, _state(0))[1]["epoch"] == 2
  ckpts.close()


def test_resume_with_every_checkpoint_damaged_starts_over(tmp_path):
  ckpts = _save_epochs(tmp_path / "checkpoints", range(2), keep=2)
  for kind, step in (("latest", 0), ("latest", 1), ("best", 1)):
    victim = _largest_file(ckpts.step_dir(kind, step))
    victim.write_bytes(b"")
  logs = []
  assert ckpts.restore_for_resume(_state(0), log=logs.append) is None
  assert any("starts again" in line for line in logs)
  assert ckpts.steps("latest") == [] and ckpts.steps("best") == []
  ckpts.close()


def test_predict_and_report_refuse_a_damaged_checkpoint_naming_the_file(tmp_path):
  from smml_jax.evaluate import inference as inf

  ckpts = RunCheckpoints(tmp_path / "checkpoints")
  ckpts.save_best(3, {"params": {"w": jnp.arange(64, dtype=jnp.float32)}}, {"epoch": 3})
  ckpts.close()
  template = {"w": jnp.zeros((64,), jnp.float32)}
  params, meta = inf.restore_params(tmp_path / "checkpoints", template, "best")
  assert meta["epoch"] == 3 and np.all(np.asarray(params["w"]) == np.arange(64))
  victim = _largest_file(tmp_path / "checkpoints" / "best" / "3")
  victim.write_bytes(victim.read_bytes()[:-7])
  with pytest.raises(inf.InferenceError) as err:
    inf.restore_params(tmp_path / "checkpoints", template, "best")
  assert "best/3" in str(err.value) and str(victim) in str(err.value)


def test_partial_checkpoint_carries_the_pipeline_position_and_is_resumed_first(tmp_path):
  ckpts = _save_epochs(tmp_path / "checkpoints", range(2))
  data = {"epoch": 2, "iterator": {"next_index": 3}}
  ckpts.save_partial(13, _state(13), {"epoch": 2, "epoch_rows": [{"loss": 0.5}]}, data)
  state, meta = ckpts.restore_for_resume(_state(0), log=lambda _: None)
  assert meta["data"] == data and meta["epoch_rows"] == [{"loss": 0.5}]
  assert np.all(np.asarray(state["w"]) == 13)
  assert "data" not in ckpts.restore("latest", 1, _state(0))[1]  # epoch ends: none given
  ckpts.save_latest(2, _state(2), {"epoch": 2})  # the epoch's end supersedes it
  assert ckpts.steps("partial") == []
  assert not any(p.name.startswith("partial") for p in (tmp_path / "checkpoints" / "manifests").iterdir())
  assert ckpts.restore_for_resume(_state(0), log=lambda _: None)[1]["epoch"] == 2
  ckpts.close()


def test_damaged_partial_checkpoint_falls_back_to_the_epoch_end(tmp_path):
  ckpts = _save_epochs(tmp_path / "checkpoints", range(2))
  ckpts.save_partial(
    13, _state(13), {"epoch": 2, "epoch_rows": [{"loss": 0.5}]}, {"epoch": 2, "iterator": {"next_index": 3}}
  )
  victim = _largest_file(ckpts.step_dir("partial", 13))
  victim.write_bytes(victim.read_bytes()[:10])
  logs = []
  state, meta = ckpts.restore_for_resume(_state(0), log=logs.append)
  assert meta["epoch"] == 1 and np.all(np.asarray(state["w"]) == 1)
  assert any("partial/13" in line and str(victim) in line for line in logs), logs
  assert ckpts.steps("partial") == [] and (tmp_path / "checkpoints" / "damaged" / "partial-13").is_dir()
  ckpts.close()
