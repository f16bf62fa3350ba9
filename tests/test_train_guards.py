"""A run that cannot train stops at the failing step, says why, and keeps its good checkpoint."""

import pytest
from _tiny import cli_args, write_spec

from experiments import run as run_cli


@pytest.mark.slow
def test_non_finite_loss_stops_the_run_at_that_step(tmp_path, capsys):
  out = tmp_path / "out"
  spec = write_spec(tmp_path / "tiny.yaml")
  args = cli_args(spec, out, tmp_path / "records", "--set", "optim.learning_rate=1e30", epochs=2)
  assert run_cli.main(args) == 3
  err = capsys.readouterr().err
  assert "training diverged at step" in err and "(epoch 0, batch" in err, err
  assert "non-finite" in err and "loss=nan" in err, err
  assert "Last good checkpoint: none" in err, err  # it diverged before the first checkpoint
  assert "Traceback" not in err
  assert not (out / "summary.json").exists()
  assert not list((out / "checkpoints" / "latest").glob("*"))  # nothing non-finite was saved


def test_divergence_message_names_step_parts_and_last_good_checkpoint(tmp_path):
  import jax.numpy as jnp
  from smml_jax.train.checkpoints import RunCheckpoints
  from smml_jax.train.loop import TrainingDiverged, _check_finite

  ckpts = RunCheckpoints(tmp_path / "checkpoints")
  ckpts.save_latest(1, {"w": jnp.ones(3)}, {"epoch": 1})
  metrics = {
    "task_loss": jnp.float32(0.7),
    "consistency_tumour": jnp.float32(jnp.inf),
    "loss": jnp.float32(jnp.nan),
    "grad_norm": jnp.float32(3.0),
    "score_tumour": jnp.float32(0.5),
    "finite": jnp.bool_(False),
  }
  with pytest.raises(TrainingDiverged) as err:
    _check_finite(metrics, 17, 2, 5, 6, ckpts)
  message = str(err.value)
  assert "step 17 (epoch 2, batch 5 of 6)" in message  # 0-based epochs, as everywhere
  assert "consistency_tumour=inf" in message and "loss=nan" in message
  assert "task_loss" not in message and "grad_norm" not in message  # only the non-finite parts
  assert f"Last good checkpoint: {tmp_path / 'checkpoints' / 'latest' / '1'}" in message
  metrics["finite"] = jnp.bool_(True)
  _check_finite(metrics, 17, 2, 5, 6, ckpts)  # a finite step passes
  ckpts.close()
