"""Data parallelism over a jax.sharding mesh: 4 host devices give the 1-device results.

XLA_FLAGS must be set before jax is imported, so the comparison runs in a subprocess with
--xla_force_host_platform_device_count=4; it trains the tiny subspace model (dropout on) for a
few steps on each mesh and saves losses, params and eval outputs for this process to compare.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # trains runs / spawns processes: minutes on 2 cores

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS = 3
SPEC = "layout: synthetic\nn_patients: 40\ngrid_side: 8\nfeature_dim: 16\nn_genes_tumour: 8\nn_genes_micro: 8\n"

SCRIPT = r"""
import sys, jax, numpy as np
sys.path.insert(0, sys.argv[1] + "/tests"); sys.path.insert(0, sys.argv[1])
from distributed_worker import tiny_config
from smml_jax.train import loop, sharding
from smml_jax.train.steps import make_train_step
assert jax.device_count() == 4, jax.devices()
config = tiny_config(sys.argv[2], sys.argv[3])
out = {}
for name, devices in (("one", jax.devices()[:1]), ("four", jax.devices())):
  mesh = sharding.make_mesh(devices)
  exp = loop.build_experiment(config, mesh)
  state, tx = loop.init_state(exp, steps_per_epoch=5)
  step = make_train_step(exp.spec, tx, exp.loss_config)
  losses = []
  for i, batch in zip(range(int(sys.argv[5])), loop.batches(exp, "train", 8, train=True)):
    b = sharding.shard_batch(batch, mesh)
    assert b["patches"].sharding.mesh.devices.size == len(devices)
    state, metrics = step(state, b)
    losses.append(float(metrics["loss"]))
  assert all(len(l.sharding.device_set) == len(devices) for l in jax.tree.leaves(state.params))
  out[name + "/losses"] = np.asarray(losses)
  for path, leaf in jax.tree_util.tree_leaves_with_path(state.params):
    out[name + "/params" + jax.tree_util.keystr(path)] = np.asarray(leaf)
  preds = loop.predict(exp, state.params, "val")
  out[name + "/val_logits"] = preds["logits"]
  out[name + "/val_index"] = preds["index"]
np.savez(sys.argv[4], **out)
"""


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, dict[str, np.ndarray]]:
  root = tmp_path_factory.mktemp("sharding")
  (root / "spec.yaml").write_text(SPEC)
  result = root / "result.npz"
  env = {
    **os.environ,
    "JAX_PLATFORMS": "cpu",
    "PYTHONPATH": str(REPO),
    "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
  }
  proc = subprocess.run(
    [sys.executable, "-c", SCRIPT, str(REPO), str(root / "spec.yaml"), str(root / "data"), str(result), str(STEPS)],
    env=env,
    cwd=REPO,
    timeout=400,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )
  assert proc.returncode == 0, f"sharding subprocess failed:\n{proc.stdout[-4000:]}"
  with np.load(result) as f:
    flat = dict(f)
  return {
    name: {k.split("/", 1)[1]: v for k, v in flat.items() if k.startswith(name + "/")} for name in ("one", "four")
  }


def test_four_devices_give_the_single_device_losses(layouts):
  one, four = layouts["one"]["losses"], layouts["four"]["losses"]
  assert one.shape == (STEPS,)
  assert np.ptp(one) > 1e-4  # the steps really updated the model
  np.testing.assert_allclose(four, one, rtol=1e-4, atol=1e-5)


def test_four_devices_give_the_single_device_params(layouts):
  one, four = layouts["one"], layouts["four"]
  names = sorted(k for k in one if k.startswith("params"))
  assert names and names == sorted(k for k in four if k.startswith("params"))
  for name in names:
    np.testing.assert_allclose(four[name], one[name], rtol=2e-4, atol=2e-5, err_msg=name)


def test_sharded_prediction_covers_the_split_in_order(layouts):
  one, four = layouts["one"], layouts["four"]
  np.testing.assert_array_equal(four["val_index"], one["val_index"])
  assert len(one["val_logits"]) == len(one["val_index"])
  np.testing.assert_allclose(four["val_logits"], one["val_logits"], rtol=1e-4, atol=1e-5)
