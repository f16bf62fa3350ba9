"""Train-step and forward throughput of the subspace model at the paper's full shape.

Full shape: 2500 patches (a 50 x 50 grid) x 1024 features, 59 tumour + 361 micro genes, the
diagnosis task (4 classes), consistency loss and gradient coordination on, Adam.

  python -m benchmarks.throughput                       # batch 1, 2, 4, 8: table + JSON lines
  python -m benchmarks.throughput --batch-sizes 2 --json  # JSON lines only
  python -m benchmarks.throughput --aot v5e:2x2 --batch-sizes 8 [--max-batch]  # TPU, deviceless

The train step is the trainer's (`train/steps.py`), sharded as the trainer shards it
(`train/sharding.py`): over all devices of all processes, `--batch-sizes` being the global batch
(a multiple of the device count); records give global and per-device slides/s. `--aot TOPOLOGY`
compiles it for a TPU slice instead (`benchmarks/aot.py`), with per-chip batch sizes.

Each configuration runs in a fresh subprocess so its peak resident memory (`peak_rss_mb`, the
process's ru_maxrss) is its own. Timing: compile (lower + compile) first, then warm-up steps, then
the median of `--steps` timed steps, `block_until_ready` around every timed region. Device memory
statistics are reported where the backend has them (GPU/TPU), else null.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Optional

from smml_jax.ops.dispatch import ATTENTION_IMPLEMENTATIONS, SAMPLERS

FULL_SHAPE = dict(n_patches=2500, feature_dim=1024, n_genes_tumour=59, n_genes_micro=361, num_classes=4)


@dataclasses.dataclass(frozen=True)
class BenchConfig:
  batch: int = 2
  n_patches: int = FULL_SHAPE["n_patches"]
  feature_dim: int = FULL_SHAPE["feature_dim"]
  n_genes_tumour: int = FULL_SHAPE["n_genes_tumour"]
  n_genes_micro: int = FULL_SHAPE["n_genes_micro"]
  num_classes: int = FULL_SHAPE["num_classes"]
  attention_impl: str = "auto"
  query_tile: int = 0  # 0: the model's default, tiles of about `tile_pairs` (query, key) pairs
  sampler: str = "auto"
  compute_dtype: str = "float32"
  steps: int = 5
  warmup: int = 2


def batch_shapes(cfg: BenchConfig) -> dict[str, tuple[tuple[int, ...], str]]:
  """Per-slide shape and dtype of every batch field."""
  return {
    "patches": ((cfg.n_patches, cfg.feature_dim), "float32"),
    "genes_tumour": ((cfg.n_genes_tumour,), "float32"),
    "genes_micro": ((cfg.n_genes_micro,), "float32"),
    "diagnosis": ((), "int32"),
    "mask": ((), "bool"),
  }


def _synthetic_batch(cfg: BenchConfig, batch: int, seed: int = 0) -> dict[str, Any]:
  import numpy as np

  rng = np.random.default_rng(seed)
  return {
    "patches": rng.normal(size=(batch, cfg.n_patches, cfg.feature_dim)).astype(np.float32),
    "genes_tumour": rng.normal(size=(batch, cfg.n_genes_tumour)).astype(np.float32),
    "genes_micro": rng.normal(size=(batch, cfg.n_genes_micro)).astype(np.float32),
    "diagnosis": rng.integers(0, cfg.num_classes, batch).astype(np.int32),
    "mask": np.ones((batch,), bool),
  }


def build_step(cfg: BenchConfig, mesh, *, abstract: bool = False):
  """(spec, train_step, state) through the trainer's code: the model built for the platform of
  `mesh`'s devices, `train/steps.py`'s jitted step, a `TrainState` replicated on `mesh` (shapes
  only, `jax.ShapeDtypeStruct`s, when `abstract`)."""
  import jax
  import jax.numpy as jnp
  from smml_jax.models.registry import build_model
  from smml_jax.ops import dispatch
  from smml_jax.optim.coordination import coordinate_gradients
  from smml_jax.optim.factory import OptimConfig, make_optimizer
  from smml_jax.train import sharding
  from smml_jax.train.state import TrainState
  from smml_jax.train.steps import LossConfig, make_train_step, model_inputs

  impl = dict(
    attention_impl=cfg.attention_impl,
    query_tile=cfg.query_tile,
    sampler=cfg.sampler,
    platform=dispatch.platform_of(mesh),
  )
  spec = build_model(
    "subspace",
    num_classes=cfg.num_classes,
    n_genes_tumour=cfg.n_genes_tumour,
    n_genes_micro=cfg.n_genes_micro,
    feature_dim=cfg.feature_dim,
    impl=impl,
  )
  if cfg.compute_dtype == "bfloat16":
    spec = dataclasses.replace(spec, module=spec.module.clone(dtype=jnp.bfloat16))
  elif cfg.compute_dtype != "float32":
    raise ValueError(f"--dtype: expected float32 or bfloat16, got {cfg.compute_dtype!r}")
  loss_cfg = LossConfig(task="diagnosis", consistency_weight=0.5, coordination=True)
  sample = {k: jnp.zeros((1, *shape), dtype) for k, (shape, dtype) in batch_shapes(cfg).items()}
  init_params = lambda key: spec.module.init({"params": key, "dropout": key}, model_inputs(sample))["params"]
  key = jax.random.PRNGKey(0)
  coordination = coordinate_gradients(spec.splits)
  tx = make_optimizer(OptimConfig(), steps_per_epoch=100, coordination=coordination)

  def init_state(key):
    params = init_params(key)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=key)

  if abstract:
    state = jax.eval_shape(init_state, key)
  else:
    state = sharding.replicate(jax.jit(init_state)(key), mesh)
  return spec, make_train_step(spec, tx, loss_cfg, mesh=mesh), state


def build(cfg: BenchConfig, mesh=None):
  """(spec, train_step, forward, state, batch) for one configuration over `mesh` (default: all
  devices of all processes); `cfg.batch` is the global batch, split over the mesh."""
  import jax
  from smml_jax.train import sharding
  from smml_jax.train.steps import under_mesh

  mesh = mesh if mesh is not None else sharding.make_mesh()
  n = mesh.devices.size
  if cfg.batch % n:
    raise ValueError(f"batch {cfg.batch} is not a multiple of the {n} devices of the mesh")
  spec, train_step, state = build_step(cfg, mesh)
  local = _synthetic_batch(cfg, cfg.batch // jax.process_count(), seed=jax.process_index())
  batch = sharding.shard_batch(local, mesh)
  forward = jax.jit(under_mesh(lambda p, x: spec.module.apply({"params": p}, x, train=False).logits, mesh))
  return spec, train_step, forward, state, batch


def _effective_tile(cfg: BenchConfig, path: str) -> Optional[int]:
  """Queries per attention tile the model uses (None: no tiling). The model sizes tiles by the
  batch it is traced with: the global batch under data parallelism."""
  if path in ("native", "reference"):
    return None
  from smml_jax.models.deform_attention import DeformAttentionConfig, offset_grid_side

  attn = DeformAttentionConfig(query_tile=cfg.query_tile)
  side = int(round(cfg.n_patches**0.5))
  keys = offset_grid_side(side, attn.offset_kernel, attn.downsample) ** attn.ndim
  return attn.tile_for(cfg.batch * attn.offset_groups, keys)


def _rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _device_peak_mb() -> Optional[float]:
  import jax

  stats = jax.local_devices()[0].memory_stats()
  if not stats or "peak_bytes_in_use" not in stats:
    return None
  return stats["peak_bytes_in_use"] / 2**20


def measure(cfg: BenchConfig) -> dict[str, Any]:
  """Runs one configuration in this process and returns its JSON record."""
  import jax
  from smml_jax.models.registry import implementations
  from smml_jax.train import distributed, sharding
  from smml_jax.train.steps import model_inputs

  distributed.maybe_initialize()  # one of several processes (scripts/launch_local.py, a pod)
  mesh = sharding.make_mesh()
  spec, train_step, forward, state, batch = build(cfg, mesh)
  impl = implementations(spec)
  inputs = model_inputs(batch)

  t0 = time.perf_counter()
  compiled_step = train_step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  compiled_fwd = forward.lower(state.params, inputs).compile()
  compile_fwd_s = time.perf_counter() - t0

  load_before = os.getloadavg()[0]
  step_times, step_cpu = [], []
  for i in range(cfg.warmup + cfg.steps):
    t0, c0 = time.perf_counter(), time.process_time()
    state, metrics = compiled_step(state, batch)
    jax.block_until_ready((state, metrics))
    if i >= cfg.warmup:
      step_times.append(time.perf_counter() - t0)
      step_cpu.append(time.process_time() - c0)
  fwd_times = []
  for i in range(cfg.warmup + cfg.steps):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled_fwd(state.params, inputs))
    if i >= cfg.warmup:
      fwd_times.append(time.perf_counter() - t0)

  step_s = statistics.median(step_times)
  fwd_s = statistics.median(fwd_times)
  flops = None
  try:
    cost = compiled_step.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops")) if cost and cost.get("flops") else None
  except Exception:  # cost analysis is best-effort and backend dependent
    pass
  devices = int(mesh.devices.size)
  return {
    "batch": cfg.batch,
    "devices": devices,
    "processes": jax.process_count(),
    "per_device_batch": cfg.batch // devices,
    "attention_impl": cfg.attention_impl,
    "attention_path": impl["attention"],
    "depthwise_path": impl["depthwise"],
    "platform": impl["platform"],
    "query_tile": _effective_tile(cfg, impl["attention"]),
    "sampler": impl["sampler"],
    "branches": impl["branches"],
    "compute_dtype": cfg.compute_dtype,
    "step_s_median": step_s,
    "step_s_min": min(step_times),
    # CPU seconds of this process (all threads) per step: on a shared machine the wall time
    # includes waiting for cores other processes hold.
    "step_cpu_s_median": statistics.median(step_cpu),
    "loadavg_1min": [load_before, os.getloadavg()[0]],
    "forward_s_median": fwd_s,
    "train_slides_per_s": cfg.batch / step_s,  # global, all devices of all processes
    "train_slides_per_s_per_device": cfg.batch / step_s / devices,
    "forward_slides_per_s": cfg.batch / fwd_s,
    "forward_slides_per_s_per_device": cfg.batch / fwd_s / devices,
    "compile_train_s": compile_s,
    "compile_forward_s": compile_fwd_s,
    "peak_rss_mb": _rss_mb(),
    "peak_device_mb": _device_peak_mb(),
    "xla_flops_per_step": flops,
    "loss": float(sharding.to_host(metrics["loss"])),
    "backend": jax.default_backend(),
    "device": str(jax.local_devices()[0].device_kind),
    "jax": jax.__version__,
    "n_patches": cfg.n_patches,
    "feature_dim": cfg.feature_dim,
    "steps": cfg.steps,
  }


def _run_child(cfg: BenchConfig) -> tuple[Optional[dict[str, Any]], str]:
  """Measures `cfg` in a fresh interpreter; (record or None, error text)."""
  args = [sys.executable, "-m", "benchmarks.throughput", "--child", json.dumps(dataclasses.asdict(cfg))]
  proc = subprocess.run(args, capture_output=True, text=True, env=os.environ.copy())
  for line in proc.stdout.splitlines()[::-1]:
    if line.startswith("{"):
      return json.loads(line), ""
  err = proc.stderr.strip().splitlines()
  return None, f"exit {proc.returncode}: {err[-1] if err else 'no output'}"


def _table(records: list[dict[str, Any]]) -> str:
  cols = [
    ("batch", "{:>5}"),
    ("attention_path", "{:>9}"),
    ("compute_dtype", "{:>8}"),
    ("step_s_median", "{:>8.3f}"),
    ("train_slides_per_s", "{:>8.2f}"),
    ("forward_s_median", "{:>8.3f}"),
    ("forward_slides_per_s", "{:>8.2f}"),
    ("compile_train_s", "{:>8.1f}"),
    ("peak_rss_mb", "{:>8.0f}"),
  ]
  heads = ["batch", "impl", "dtype", "step s", "train/s", "fwd s", "fwd/s", "compile", "RSS MB"]
  lines = ["  ".join(f"{h:>{len(f.format(records[0][c]))}}" for h, (c, f) in zip(heads, cols))]
  for r in records:
    lines.append("  ".join(f.format(r[c]) for c, f in cols))
  return "\n".join(lines)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8])
  p.add_argument("--impl", nargs="+", default=["auto"], choices=ATTENTION_IMPLEMENTATIONS)
  p.add_argument("--query-tile", type=int, default=BenchConfig.query_tile)
  p.add_argument("--sampler", default=BenchConfig.sampler, choices=SAMPLERS)
  p.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "bfloat16"])
  p.add_argument(
    "--patches",
    type=int,
    default=FULL_SHAPE["n_patches"],
    help="tokens per slide (a square number); default the paper's 2500",
  )
  p.add_argument("--grid-side", type=int, help="tokens per slide as a grid side (--patches N^2)")
  p.add_argument(
    "--aot",
    metavar="TOPOLOGY",
    help="compile the sharded train step for a TPU topology (e.g. v5e:2x2, v5e:4x4, "
    "v5p:4x4x4, v6e:4x4) ahead of time, deviceless (needs libtpu: the `tpu` "
    "extra); --batch-sizes are then PER CHIP",
  )
  p.add_argument(
    "--max-batch",
    action="store_true",
    help="with --aot: find the largest per-chip batch that fits the chip's HBM "
    "(doubling from the smallest --batch-sizes, then bisection)",
  )
  p.add_argument(
    "--max-batch-resolution",
    type=int,
    default=1,
    help="stop the bisection when the fitting and failing batches are this close",
  )
  p.add_argument("--feature-dim", type=int, default=FULL_SHAPE["feature_dim"])
  p.add_argument("--steps", type=int, default=BenchConfig.steps)
  p.add_argument("--warmup", type=int, default=BenchConfig.warmup)
  p.add_argument("--json", action="store_true", help="print only JSON lines")
  p.add_argument("--child", help=argparse.SUPPRESS)
  args = p.parse_args(argv)

  if args.child:
    print(json.dumps(measure(BenchConfig(**json.loads(args.child)))), flush=True)
    return
  if args.grid_side:
    args.patches = args.grid_side**2
  if args.max_batch and not args.aot:
    p.error("--max-batch needs --aot TOPOLOGY (it sizes the program against a chip's HBM)")
  if args.aot:
    from benchmarks import aot

    try:
      aot.check_options(args.aot, args.impl)
    except aot.AotError as e:
      p.exit(2, f"error: {e}\n")
    for impl in args.impl:
      for dtype in args.dtype:
        cfg = BenchConfig(
          n_patches=args.patches,
          feature_dim=args.feature_dim,
          attention_impl=impl,
          query_tile=args.query_tile,
          sampler=args.sampler,
          compute_dtype=dtype,
        )
        try:
          aot.run(
            cfg,
            args.aot,
            args.batch_sizes,
            find_max=args.max_batch,
            resolution=args.max_batch_resolution,
            print_record=lambda r: print(json.dumps(r), flush=True),
          )
        except aot.AotError as e:
          p.exit(2, f"error: {e}\n")
    return

  records = []
  for impl in args.impl:
    for dtype in args.dtype:
      for b in args.batch_sizes:
        cfg = BenchConfig(
          batch=b,
          n_patches=args.patches,
          feature_dim=args.feature_dim,
          attention_impl=impl,
          query_tile=args.query_tile,
          sampler=args.sampler,
          compute_dtype=dtype,
          steps=args.steps,
          warmup=args.warmup,
        )
        record, err = _run_child(cfg)
        if record is None:  # e.g. out of memory: skip what does not fit
          print(f"batch {b} ({impl}, {dtype}) skipped: {err}", file=sys.stderr, flush=True)
          continue
        records.append(record)
        print(json.dumps(record), flush=True)
  if not args.json and records:
    print()
    print(
      f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
      f"backend {records[0]['backend']} ({records[0]['device']}), jax {records[0]['jax']}"
    )
    print(_table(records))


if __name__ == "__main__":
  main()
