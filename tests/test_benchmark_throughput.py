"""`python -m benchmarks.throughput --json`: one JSON line per configuration with the fields the
performance issue asks for, measured in a fresh process."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # trains runs / spawns processes: minutes on 2 cores


def test_json_lines_carry_the_measured_fields():
  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.throughput", "--patches", "64", "--feature-dim", "16",
       "--batch-sizes", "1", "2", "--steps", "1", "--warmup", "1", "--json"],
      capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  records = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
  assert [r["batch"] for r in records] == [1, 2]
  for r in records:
    assert r["step_s_median"] > 0 and r["forward_s_median"] > 0 and r["compile_train_s"] > 0
    assert r["peak_rss_mb"] > 100  # a JAX process, measured, not a placeholder
    assert r["attention_impl"] == "auto" and r["attention_path"] in ("native", "fused")
    assert (r["query_tile"] is None) == (r["attention_path"] == "native")
