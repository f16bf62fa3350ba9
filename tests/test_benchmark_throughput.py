"""`python -m benchmarks.throughput --json`: one JSON line per configuration with the fields the
performance issue asks for, measured in a fresh process."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # trains runs / spawns processes: minutes on 2 cores

SMALL = ["--patches", "64", "--feature-dim", "16", "--steps", "1", "--warmup", "1", "--json"]


def _records(stdout):
  return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_throughput_runs_the_sharded_step_over_all_local_devices():
  # Also the fields every JSON line carries (one run: each configuration compiles in a child).
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  proc = subprocess.run(
    [sys.executable, "-m", "benchmarks.throughput", "--batch-sizes", "4", "6", *SMALL],
    capture_output=True,
    text=True,
    timeout=900,
    env=env,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  (r,) = _records(proc.stdout)  # 6 slides do not split over 4 devices: skipped, and said so
  assert "batch 6" in proc.stderr and "multiple of the 4 devices" in proc.stderr
  assert (r["batch"], r["devices"], r["processes"], r["per_device_batch"]) == (4, 4, 1, 1)
  assert r["platform"] == "cpu"
  assert r["step_s_median"] > 0 and r["forward_s_median"] > 0 and r["compile_train_s"] > 0
  assert r["peak_rss_mb"] > 100  # a JAX process, measured, not a placeholder
  assert r["attention_impl"] == "auto" and r["attention_path"] in ("native", "fused")
  assert (r["query_tile"] is None) == (r["attention_path"] == "native")
  assert r["train_slides_per_s"] == pytest.approx(4 / r["step_s_median"])
  assert r["train_slides_per_s_per_device"] == pytest.approx(r["train_slides_per_s"] / 4)
  assert r["forward_slides_per_s_per_device"] == pytest.approx(r["forward_slides_per_s"] / 4)


@pytest.mark.slow
def test_throughput_in_a_multi_process_job():
  proc = subprocess.run(
    [
      sys.executable,
      str(REPO / "scripts" / "launch_local.py"),
      "-n",
      "2",
      "--devices-per-process",
      "2",
      "--timeout",
      "900",
      "--",
      sys.executable,
      "-m",
      "benchmarks.throughput",
      "--batch-sizes",
      "4",
      *SMALL,
    ],
    capture_output=True,
    text=True,
    timeout=1000,
    cwd=REPO,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  (r,) = _records(proc.stdout)
  assert (r["devices"], r["processes"], r["per_device_batch"]) == (4, 2, 1)
  assert r["train_slides_per_s_per_device"] == pytest.approx(r["train_slides_per_s"] / 4)
