"""`python -m benchmarks.throughput --aot TOPOLOGY`: the trainer's sharded train step compiled for
a TPU slice by the real TPU compiler, deviceless, on small shapes. Needs libtpu (the `tpu` extra);
skipped where it is absent. Each compile runs in a subprocess: initialising the TPU plugin in the
test process would change its JAX backends for the tests after it."""

import importlib.util
import json
import subprocess
import sys

import pytest

from benchmarks import aot, throughput

needs_libtpu = pytest.mark.skipif(
  importlib.util.find_spec("libtpu") is None, reason="libtpu not installed (pip install '.[tpu]')"
)
SMALL = ["--grid-side", "8", "--feature-dim", "16", "--json"]


def _aot(*args):
  proc = subprocess.run(
    [sys.executable, "-m", "benchmarks.throughput", *args], text=True, capture_output=True, timeout=1200
  )
  records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
  return proc, records


@pytest.mark.slow  # ~20-40 s of CPU (TPU compiler start-up and the compile), minutes when loaded
@needs_libtpu
def test_default_train_step_compiles_for_a_v5e_slice():
  proc, records = _aot("--aot", "v5e:2x2", "--batch-sizes", "2", *SMALL)
  assert proc.returncode == 0, proc.stderr[-3000:]
  (r,) = records
  assert (r["topology"], r["chips"], r["per_chip_batch"], r["global_batch"]) == ("v5e:2x2", 4, 2, 8)
  assert r["device_kind"].startswith("TPU v5")
  assert r["compiled"] and r["fits"] and r["compile_s"] > 0 and r["compile_cpu_s"] > 0
  assert len(r["load_avg_1m"]) == 2  # the host's load at the compile's start and end
  # `auto` resolved for the TPU, not for this CPU host: an XLA path, the XLA depthwise conv.
  assert r["attention_impl"] == "auto" and r["attention_path"] != "native"
  assert r["depthwise_path"] == "selection"
  assert (r["sampler"], r["branches"]) == ("matmul", "stacked")
  assert r["temp_mb"] > 0 and r["gflops"] > 0 and r["gbytes"] > 0
  # The state (params + two Adam moments) is an argument; every gradient is all-reduced.
  assert r["argument_mb"] >= 3 * r["grad_mb"]
  assert r["collective_mb"] >= r["grad_mb"]
  chip = aot.CHIPS["v5e"]
  assert r["est_step_s"] == pytest.approx(
    max(r["gflops"] * 1e9 / chip["peak_flops"], r["gbytes"] * 1e9 / chip["hbm_bytes_per_s"])
  )
  assert r["est_slides_per_s_per_chip"] == pytest.approx(2 / r["est_step_s"])


def test_native_for_a_tpu_is_refused_and_unknown_chips_are_named(capsys):
  # Both are refused before the TPU plugin starts (libtpu is not needed), so the CLI runs in this
  # process.
  with pytest.raises(SystemExit) as exited:
    throughput.main(["--aot", "v5e:2x2", "--impl", "auto", "native", "--batch-sizes", "1", *SMALL])
  err = capsys.readouterr().err
  assert exited.value.code == 2 and "--impl native" in err and "CPU only" in err
  with pytest.raises(SystemExit) as exited:
    throughput.main(["--aot", "v4:2x2x1", "--batch-sizes", "1", *SMALL])
  assert exited.value.code == 2 and "no chip data for 'v4'" in capsys.readouterr().err


def test_max_batch_search_finds_the_largest_fitting_size():
  for limit in (1, 5, 8, 13, 32, 100):
    probes = []
    fits = lambda n: probes.append(n) or n <= limit
    assert aot.search_max(fits, start=8) == (limit, limit + 1)
    assert len(probes) == len(set(probes))  # no size compiled twice
  assert aot.search_max(lambda n: False, start=4) == (None, 1)
  fit, fail = aot.search_max(lambda n: n <= 45, start=8, resolution=8)
  assert fit <= 45 < fail and fail - fit <= 8


def test_timed_reports_wall_and_cpu_seconds_and_the_hosts_load():
  busy = lambda: sum(i * i for i in range(300_000))
  value, wall_s, cpu_s, load = aot.timed(busy)
  assert value == busy()
  assert wall_s > 0 and cpu_s > 0  # the process's CPU time, all threads (the compiler's too)
  assert len(load) == 2 and all(x >= 0 for x in load)


def test_all_reduce_bytes_counts_sync_and_async_all_reduces_once():
  hlo = "\n".join(
    [
      "  %a = f32[128,64]{1,0} all-reduce(f32[128,64]{1,0} %x), replica_groups={}",
      "  %b = (f32[10]{0}, bf16[4,4]{1,0}) all-reduce-start(f32[10]{0} %y, bf16[4,4]{1,0} %z)",
      "  %c = (f32[10]{0}, bf16[4,4]{1,0}) all-reduce-done(%b)",
      "  %d = f32[999]{0} add(f32[999]{0} %p, f32[999]{0} %q)",
    ]
  )
  assert aot.all_reduce_bytes(hlo) == 128 * 64 * 4 + 10 * 4 + 4 * 4 * 2


@pytest.mark.slow  # ~20-40 s of CPU, minutes when loaded
@needs_libtpu
def test_pallas_train_step_compiles_for_a_v5e_slice():
  # GSPMD cannot partition a Mosaic kernel: the trainer's step traces under its mesh, and the
  # kernel runs per chip in a shard_map.
  proc, records = _aot("--aot", "v5e:2x2", "--impl", "pallas", "--batch-sizes", "1", *SMALL)
  assert proc.returncode == 0, proc.stderr[-3000:]
  (r,) = records
  assert r["compiled"], r.get("error")
  assert (r["attention_impl"], r["attention_path"], r["chips"]) == ("pallas", "pallas", 4)
  assert r["temp_mb"] > 0 and r["gflops"] > 0
