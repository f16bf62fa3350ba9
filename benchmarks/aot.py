"""The sharded train step compiled ahead of time for a TPU topology, on a machine without a TPU.

`python -m benchmarks.throughput --aot v5e:2x2` lands here. With `libtpu` installed (the `tpu`
extra), `jax.experimental.topologies` describes a TPU slice deviceless; the trainer's own step
(`train/steps.py`), state (`train/state.py`) and shardings (`train/sharding.py`: batch split over
a 1D 'data' mesh of the slice's chips, parameters and optimiser state replicated) are lowered on
`jax.ShapeDtypeStruct` inputs carrying those shardings and compiled by the real TPU compiler.
The compiled program's memory and cost analyses are per chip (the SPMD-partitioned program one
chip runs).
"""

from __future__ import annotations

import os
import re
import time
from typing import Any, Optional

# Several processes on one host may load libtpu (tests, benchmarks, other users): without this
# libtpu refuses all but the first with a lockfile error. Set before libtpu is initialised.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

# Per chip: dense bf16 matmul peak (FLOP/s), HBM bandwidth (bytes/s), HBM capacity (bytes), from
# Google Cloud's TPU system-architecture pages (https://cloud.google.com/tpu/docs/v5e,
# https://cloud.google.com/tpu/docs/v5p, https://cloud.google.com/tpu/docs/v6e): v5e 197 TFLOP/s,
# 819 GB/s, 16 GiB; v5p 459 TFLOP/s, 2765 GB/s, 95 GiB; v6e 918 TFLOP/s, 1640 GB/s, 32 GiB.
# float32 dots run at the bf16 rate too: JAX's default matmul precision on TPU multiplies float32
# operands in one bf16 pass. v4 (megacore: two cores per chip, one device each) is not tabled.
CHIPS = {
  "v5e": dict(peak_flops=197e12, hbm_bytes_per_s=819e9, hbm_bytes=16 * 2**30),
  "v5p": dict(peak_flops=459e12, hbm_bytes_per_s=2765e9, hbm_bytes=95 * 2**30),
  "v6e": dict(peak_flops=918e12, hbm_bytes_per_s=1640e9, hbm_bytes=32 * 2**30),
}

_DTYPE_BYTES = {
  "f64": 8,
  "s64": 8,
  "u64": 8,
  "c64": 8,
  "f32": 4,
  "s32": 4,
  "u32": 4,
  "bf16": 2,
  "f16": 2,
  "s16": 2,
  "u16": 2,
  "s8": 1,
  "u8": 1,
  "pred": 1,
}
_SHAPE = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([0-9,]*)\]")
_ALL_REDUCE = re.compile(r"=\s*(.*?)\s+all-reduce(?:-start)?\(")


class AotError(ValueError):
  """A topology or option the AOT benchmark cannot use."""


def chip_of(topology: str) -> dict[str, float]:
  """The CHIPS row of a topology name such as 'v5e:2x2'."""
  generation = topology.split(":", 1)[0]
  if generation not in CHIPS:
    raise AotError(
      f"--aot {topology!r}: no chip data for {generation!r}; known: {sorted(CHIPS)} (e.g. v5e:2x2, v5p:2x2x1, v6e:4x4)"
    )
  return CHIPS[generation]


def check_options(topology: str, attention_impls) -> None:
  """Refuses an unknown chip or an attention implementation a TPU cannot run, before libtpu starts.

  Raises:
    AotError: naming the option and what is expected.
  """
  from smml_jax.ops import dispatch

  chip_of(topology)
  for impl in attention_impls:
    try:
      dispatch.resolve_attention(impl, "tpu", native_supported=False)
    except dispatch.DispatchError as e:
      raise AotError(f"--aot {topology!r} --impl {impl}: {e}") from e


def topology_mesh(topology: str):
  """A 1D 'data' mesh (train/sharding.py) over the chips of a TPU topology, deviceless."""
  from jax.experimental import topologies
  from smml_jax.train import sharding

  chip_of(topology)
  try:
    devices = topologies.get_topology_desc(platform="tpu", topology_name=topology).devices
  except Exception as e:  # libtpu absent or an unknown topology name
    raise AotError(
      f"--aot {topology!r}: cannot describe the topology ({type(e).__name__}: "
      f"{str(e).strip().splitlines()[-1] if str(e).strip() else e}); is libtpu "
      "installed (pip install '.[tpu]')?"
    ) from e
  return sharding.make_mesh(devices)


def all_reduce_bytes(hlo_text: str) -> int:
  """Bytes produced by the all-reduce ops of a compiled HLO module (async starts counted once)."""
  total = 0
  for line in hlo_text.splitlines():
    match = _ALL_REDUCE.search(line)
    if not match:
      continue
    for dtype, dims in _SHAPE.findall(match.group(1)):
      n = 1
      for d in filter(None, dims.split(",")):
        n *= int(d)
      total += n * _DTYPE_BYTES[dtype]
  return total


def abstract_inputs(cfg, mesh):
  """(train_step, abstract state, abstract global batch, spec) for `cfg` (a BenchConfig with the
  PER-CHIP batch) over `mesh`: shapes and shardings only, nothing allocated."""
  import jax
  from benchmarks.throughput import build_step
  from smml_jax.train import sharding

  spec, train_step, state = build_step(cfg, mesh, abstract=True)
  replicated = sharding.replicated(mesh)
  state = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), state)
  global_batch = cfg.batch * mesh.devices.size
  batch_sharding = sharding.batch_sharding(mesh)
  import numpy as np
  from benchmarks.throughput import batch_shapes

  batch = {
    k: jax.ShapeDtypeStruct((global_batch, *shape), np.dtype(dtype), sharding=batch_sharding)
    for k, (shape, dtype) in batch_shapes(cfg).items()
  }
  return train_step, state, batch, spec


def timed(fn):
  """(fn(), wall s, this process's CPU s over all its threads, 1-minute load average at the start
  and at the end): on a shared host the wall time is mostly waiting, so the CPU time and the load
  go beside it."""
  load0, w0, c0 = os.getloadavg()[0], time.perf_counter(), time.process_time()
  value = fn()
  return value, time.perf_counter() - w0, time.process_time() - c0, [load0, os.getloadavg()[0]]


def compile_record(cfg, topology: str, mesh=None) -> dict[str, Any]:
  """Compiles the train step of `cfg` (per-chip batch) for `topology`; one JSON record."""
  import jax
  from smml_jax.models.registry import implementations

  chip = chip_of(topology)
  mesh = mesh if mesh is not None else topology_mesh(topology)
  chips = int(mesh.devices.size)
  train_step, state, batch, spec = abstract_inputs(cfg, mesh)
  impl = implementations(spec)
  record: dict[str, Any] = {
    "topology": topology,
    "chips": chips,
    "device_kind": mesh.devices.flat[0].device_kind,
    "per_chip_batch": cfg.batch,
    "global_batch": cfg.batch * chips,
    "attention_impl": cfg.attention_impl,
    "attention_path": impl.get("attention"),
    "depthwise_path": impl.get("depthwise"),
    "sampler": impl.get("sampler"),
    "branches": impl.get("branches"),
    "dtype": cfg.compute_dtype,
    "n_patches": cfg.n_patches,
    "feature_dim": cfg.feature_dim,
    "jax": jax.__version__,
  }
  failure = []

  def lower_and_compile():
    try:
      return train_step.lower(state, batch).compile()
    except Exception as e:  # e.g. the program does not fit the chip's HBM
      failure.append(e)

  compiled, compile_s, compile_cpu_s, load = timed(lower_and_compile)
  record.update(compile_s=compile_s, compile_cpu_s=compile_cpu_s, load_avg_1m=load)
  if failure:
    message = str(failure[0]).strip().splitlines()
    record.update(
      compiled=False, fits=False, error=f"{type(failure[0]).__name__}: {message[0][:500] if message else ''}"
    )
    return record
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops, accessed = float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))
  mb = lambda n: n / 2**20
  # Donated state buffers are aliased to outputs: counted once.
  hbm = (
    mem.argument_size_in_bytes
    + mem.output_size_in_bytes
    - mem.alias_size_in_bytes
    + mem.temp_size_in_bytes
    + mem.generated_code_size_in_bytes
  )
  param_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state.params))
  est_step_s = max(flops / chip["peak_flops"], accessed / chip["hbm_bytes_per_s"])
  record.update(
    compiled=True,
    temp_mb=mb(mem.temp_size_in_bytes),
    argument_mb=mb(mem.argument_size_in_bytes),
    output_mb=mb(mem.output_size_in_bytes),
    alias_mb=mb(mem.alias_size_in_bytes),
    hbm_mb=mb(hbm),
    hbm_capacity_mb=mb(chip["hbm_bytes"]),
    fits=hbm <= chip["hbm_bytes"],
    gflops=flops / 1e9,
    gbytes=accessed / 1e9,
    collective_mb=mb(all_reduce_bytes(compiled.as_text())) if chips > 1 else 0.0,
    grad_mb=mb(param_bytes),
    est_step_s=est_step_s,
    est_slides_per_s_per_chip=cfg.batch / est_step_s if est_step_s > 0 else None,
    bound="flops" if flops / chip["peak_flops"] >= accessed / chip["hbm_bytes_per_s"] else "hbm",
    # XLA's cost analysis counts a while loop's body once: the query tiles of `fused` and
    # `chunked` (a lax.map) are undercounted by their number of tiles.
    cost_counts_loop_body_once=impl.get("attention") in ("fused", "chunked"),
  )
  return record


def search_max(fits, start: int = 1, limit: int = 4096, resolution: int = 1):
  """The largest n with fits(n), for a monotone `fits`: doubling from `start` (halving when
  `start` does not fit), then bisection until the largest fitting and the smallest failing n are
  at most `resolution` apart. Returns (largest fitting n or None, smallest failing n or None)."""
  fit = fail = None
  n = start
  while n <= limit:
    if not fits(n):
      fail = n
      break
    fit, n = n, n * 2
  while fit is None and n > 1:
    n //= 2
    if fits(n):
      fit = n
    else:
      fail = n
  if fit is None or fail is None:
    return fit, fail
  while fail - fit > max(1, resolution):
    mid = (fit + fail) // 2
    if fits(mid):
      fit = mid
    else:
      fail = mid
  return fit, fail


def max_batch(cfg, topology: str, start: int = 1, limit: int = 4096, resolution: int = 1, log=None):
  """The largest per-chip batch whose program compiles and fits the chip's HBM (`search_max`).
  Returns (largest fitting batch or None, smallest failing batch or None, all records)."""
  import dataclasses

  mesh = topology_mesh(topology)
  records = []

  def probe(b: int) -> bool:
    record = compile_record(dataclasses.replace(cfg, batch=b), topology, mesh)
    records.append(record)
    if log:
      log(record)
    return bool(record.get("fits"))

  fit, fail = search_max(probe, start, limit, resolution)
  return fit, fail, records


def run(cfg, topology: str, batches, *, find_max: bool, print_record, resolution: int = 1) -> Optional[int]:
  """Prints a record per per-chip batch (and the --max-batch search); the max batch or None."""
  if find_max:
    best, fail, _ = max_batch(cfg, topology, start=min(batches), resolution=resolution, log=print_record)
    print_record(
      {
        "topology": topology,
        "attention_impl": cfg.attention_impl,
        "dtype": cfg.compute_dtype,
        "max_per_chip_batch": best,
        "smallest_failing_batch": fail,
      }
    )
    return best
  import dataclasses

  mesh = topology_mesh(topology)
  for b in batches:
    print_record(compile_record(dataclasses.replace(cfg, batch=b), topology, mesh))
  return None
