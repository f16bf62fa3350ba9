"""Multi-process training through jax.distributed on this machine (CPU, gloo over loopback).

The tiny subspace model (dropout on) trains on a 40-patient synthetic cohort:
  reference: 1 process x 4 devices, stopped after epoch 0 (snapshot), then resumed to the end;
  2 processes x 2 devices, stopped after epoch 0; its run directory is then resumed by
  1 process x 4 devices.
The global batch, data order and dropout key are the same in every layout, so per-step losses
and parameters must agree within float tolerance (the sharded reductions may sum in another
order).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from smml_jax.train import distributed

pytestmark = pytest.mark.slow  # trains runs / spawns processes: minutes on 2 cores

REPO = pathlib.Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "distributed_worker.py"
TIMEOUT_S = 420
SPEC = "layout: synthetic\nn_patients: 40\ngrid_side: 8\nfeature_dim: 16\nn_genes_tumour: 8\nn_genes_micro: 8\n"


def _cache_env(root: pathlib.Path) -> dict[str, str]:
  # The single-process runs compile the same 4-device programs: share them through the cache.
  return {
    "JAX_COMPILATION_CACHE_DIR": str(root / "xla_cache"),
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "1",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    "PYTHONPATH": str(REPO),
  }


def _worker_args(root: pathlib.Path, out: pathlib.Path, *extra: str) -> list[str]:
  return [
    sys.executable,
    str(WORKER),
    "--out",
    str(out),
    "--data",
    str(root / "spec.yaml"),
    "--data-dir",
    str(root / "data"),
    *extra,
  ]


def _run_single(root: pathlib.Path, out: pathlib.Path, *extra: str, devices: int = 4) -> None:
  env = {
    **os.environ,
    **_cache_env(root),
    "JAX_PLATFORMS": "cpu",
    "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
  }
  for k in ("SMML_COORDINATOR_ADDRESS", "SMML_NUM_PROCESSES", "SMML_PROCESS_ID"):
    env.pop(k, None)
  proc = subprocess.run(
    _worker_args(root, out, *extra),
    env=env,
    cwd=REPO,
    timeout=TIMEOUT_S,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )
  assert proc.returncode == 0, f"single-process worker failed:\n{proc.stdout[-4000:]}"
  assert "worker 0/1 done, 4 devices" in proc.stdout


def _metric_rows(run: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _train_rows(run: pathlib.Path) -> dict[int, list[float]]:
  return {r["epoch"]: r["step_losses"] for r in _metric_rows(run) if r["split"] == "train"}


def _state(checkpoint_step_dir: pathlib.Path) -> dict:
  """A TrainState checkpoint (e.g. .../latest/0) as nested dicts of numpy arrays."""
  with ocp.PyTreeCheckpointer() as ckptr:
    path = checkpoint_step_dir / "state"
    tree = ckptr.metadata(path).item_metadata.tree
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return ckptr.restore(path, restore_args=args)


def _assert_trees_close(a, b, what: str) -> None:
  assert jax.tree.structure(a) == jax.tree.structure(b), what
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-5, err_msg=f"{what}: {jax.tree_util.keystr(path)}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("distributed")
  (root / "spec.yaml").write_text(SPEC)
  multi = root / "two_processes"
  # First, so the cohort is built here: process 0 writes the records, process 1 waits.
  results = distributed.launch_local(
    _worker_args(root, multi, "--stop-after-epoch", "0", "--snapshot", "epoch0"),
    2,
    devices_per_process=2,
    timeout_s=TIMEOUT_S,
    env=_cache_env(root),
    cwd=str(REPO),
    log_dir=str(root / "logs"),
  )
  for i, (rc, out) in enumerate(results):
    assert rc == 0, f"process {i} of the 2-process run exited with {rc}:\n{out[-4000:]}"
    assert f"worker {i}/2 done, 4 devices" in out
  reference = root / "one_process"
  _run_single(root, reference, "--stop-after-epoch", "0", "--snapshot", "epoch0")
  _run_single(root, reference, "--resume")
  return root, multi, reference


def test_two_processes_match_one_process(runs):
  _, multi, reference = runs
  multi_losses, ref_losses = _train_rows(multi), _train_rows(reference)
  assert sorted(multi_losses) == [0] and sorted(ref_losses) == [0, 1]
  assert len(multi_losses[0]) == len(ref_losses[0]) >= 4
  np.testing.assert_allclose(multi_losses[0], ref_losses[0], rtol=1e-4, atol=1e-5)
  # The run really trained: the loss moved between steps.
  assert np.ptp(ref_losses[0]) > 1e-3
  multi_state, ref_state = _state(multi / "epoch0" / "0"), _state(reference / "epoch0" / "0")
  assert int(multi_state["step"]) == int(ref_state["step"]) == len(ref_losses[0])
  _assert_trees_close(multi_state["params"], ref_state["params"], "params after epoch 0")
  _assert_trees_close(multi_state["opt_state"], ref_state["opt_state"], "optimiser state")
  np.testing.assert_array_equal(multi_state["rng"], ref_state["rng"])
  # Evaluation metrics cover the whole split (every slide, gathered from both hosts).
  val_rows = {
    name: [r for r in _metric_rows(run) if r["split"] != "train" and r["epoch"] == 0]
    for name, run in (("multi", multi), ("reference", reference))
  }
  assert [r["split"] for r in val_rows["multi"]] == ["val", "test"]
  for m, r in zip(val_rows["multi"], val_rows["reference"]):
    assert m["num_examples"] == r["num_examples"] > 0
    for k, v in r.items():
      if isinstance(v, float):
        np.testing.assert_allclose(m[k], v, rtol=1e-4, atol=1e-5, err_msg=f"{m['split']} {k}")
  # Only process 0 wrote the run records, once.
  assert (multi / "config.json").is_file() and (multi / "predictions_val.jsonl").is_file()


def test_two_process_checkpoint_resumes_in_one_process(runs):
  root, multi, reference = runs
  resumed = root / "resumed"
  shutil.copytree(multi, resumed)
  _run_single(root, resumed, "--resume")
  resumed_losses, ref_losses = _train_rows(resumed), _train_rows(reference)
  np.testing.assert_allclose(resumed_losses[0], _train_rows(multi)[0])  # history carried over
  # The next step after the 2-process checkpoint, and every later one, as in the reference.
  np.testing.assert_allclose(resumed_losses[1], ref_losses[1], rtol=1e-4, atol=1e-5)
  final = {p: _state(p / "checkpoints" / "latest" / "1") for p in (resumed, reference)}
  _assert_trees_close(final[resumed]["params"], final[reference]["params"], "final params")
  summary = json.loads((resumed / "summary.json").read_text())
  assert summary["last_epoch"]["epoch"] == 1


def test_maybe_initialize_needs_a_process_id(monkeypatch):
  for k in ("SMML_PROCESS_ID", "JAX_PROCESS_ID", "SMML_DISTRIBUTED"):
    monkeypatch.delenv(k, raising=False)
  with pytest.raises(ValueError, match="process id is needed"):
    distributed.maybe_initialize("127.0.0.1:1", 2, None)
  with pytest.raises(ValueError, match=r"process id 2 not in \[0, 2\)"):
    distributed.maybe_initialize("127.0.0.1:1", 2, 2)


def test_maybe_initialize_single_process_does_nothing(monkeypatch):
  for k in (
    "SMML_COORDINATOR_ADDRESS",
    "JAX_COORDINATOR_ADDRESS",
    "SMML_NUM_PROCESSES",
    "JAX_NUM_PROCESSES",
    "SMML_DISTRIBUTED",
  ):
    monkeypatch.delenv(k, raising=False)
  assert distributed.maybe_initialize() is False
  assert distributed.maybe_initialize("127.0.0.1:1", 1, 0) is False
