"""Train-step and forward throughput of the subspace model at the paper's full shape.

Full shape: 2500 patches (a 50 x 50 grid) x 1024 features, 59 tumour + 361 micro genes, the
diagnosis task (4 classes), consistency loss and gradient coordination on, Adam.

  python -m benchmarks.throughput                       # batch 1, 2, 4, 8: table + JSON lines
  python -m benchmarks.throughput --batch-sizes 2 --json  # JSON lines only

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

FULL_SHAPE = dict(n_patches=2500, feature_dim=1024, n_genes_tumour=59, n_genes_micro=361,
                  num_classes=4)


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
  sampler: str = "gather"
  compute_dtype: str = "float32"
  steps: int = 5
  warmup: int = 2


def _synthetic_batch(cfg: BenchConfig, seed: int = 0) -> dict[str, Any]:
  import numpy as np
  rng = np.random.default_rng(seed)
  b = cfg.batch
  return {
      "patches": rng.normal(size=(b, cfg.n_patches, cfg.feature_dim)).astype(np.float32),
      "genes_tumour": rng.normal(size=(b, cfg.n_genes_tumour)).astype(np.float32),
      "genes_micro": rng.normal(size=(b, cfg.n_genes_micro)).astype(np.float32),
      "diagnosis": rng.integers(0, cfg.num_classes, b).astype(np.int32),
      "mask": np.ones((b,), bool),
  }


def build(cfg: BenchConfig):
  """(spec, train_step, forward, state, batch) for one configuration."""
  import jax
  import jax.numpy as jnp
  from smml_jax.models.registry import build_model
  from smml_jax.optim.coordination import coordinate_gradients
  from smml_jax.optim.factory import OptimConfig, make_optimizer
  from smml_jax.train.state import TrainState
  from smml_jax.train.steps import LossConfig, make_train_step, model_inputs

  options = dict(attention_impl=cfg.attention_impl, query_tile=cfg.query_tile,
                 sampler=cfg.sampler)
  spec = build_model("subspace", num_classes=cfg.num_classes,
                     n_genes_tumour=cfg.n_genes_tumour, n_genes_micro=cfg.n_genes_micro,
                     feature_dim=cfg.feature_dim, options=options)
  if cfg.compute_dtype == "bfloat16":
    spec = dataclasses.replace(spec, module=spec.module.clone(dtype=jnp.bfloat16))
  elif cfg.compute_dtype != "float32":
    raise ValueError(f"--dtype: expected float32 or bfloat16, got {cfg.compute_dtype!r}")
  loss_cfg = LossConfig(task="diagnosis", consistency_weight=0.5, coordination=True)
  batch = {k: jnp.asarray(v) for k, v in _synthetic_batch(cfg).items()}
  key = jax.random.PRNGKey(0)
  params = jax.jit(lambda k, x: spec.module.init({"params": k, "dropout": k}, x))(
      key, {k: v[:1] for k, v in model_inputs(batch).items()})["params"]
  coordination = coordinate_gradients(spec.splits)
  tx = make_optimizer(OptimConfig(), steps_per_epoch=100, coordination=coordination)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                     rng=key)
  train_step = make_train_step(spec, tx, loss_cfg)
  forward = jax.jit(lambda p, x: spec.module.apply({"params": p}, x, train=False).logits)
  return spec, train_step, forward, state, batch


def _attention_path(cfg: BenchConfig) -> str:
  """The attention implementation `cfg.attention_impl` resolves to ("auto" picks one)."""
  if cfg.attention_impl != "auto":
    return cfg.attention_impl
  import jax
  from smml_jax.ops import native
  native_runs = (jax.default_backend() == "cpu" and cfg.compute_dtype == "float32"
                 and native.load())
  return "native" if native_runs else "fused"


def _effective_tile(cfg: BenchConfig) -> Optional[int]:
  """Queries per attention tile the model uses for this configuration (None: no tiling)."""
  if _attention_path(cfg) in ("native", "reference"):
    return None
  from smml_jax.models.deform_attention import DeformAttentionConfig, offset_grid_side
  attn = DeformAttentionConfig(query_tile=cfg.query_tile)
  side = int(round(cfg.n_patches**0.5))
  keys = offset_grid_side(side, attn.offset_kernel, attn.downsample)**attn.ndim
  return attn.tile_for(cfg.batch * attn.offset_groups, keys)


def _rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _device_peak_mb() -> Optional[float]:
  import jax
  stats = jax.devices()[0].memory_stats()
  if not stats or "peak_bytes_in_use" not in stats:
    return None
  return stats["peak_bytes_in_use"] / 2**20


def measure(cfg: BenchConfig) -> dict[str, Any]:
  """Runs one configuration in this process and returns its JSON record."""
  import jax
  from smml_jax.train.steps import model_inputs

  _, train_step, forward, state, batch = build(cfg)
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
  return {
      "batch": cfg.batch,
      "attention_impl": cfg.attention_impl,
      "attention_path": _attention_path(cfg),
      "query_tile": _effective_tile(cfg),
      "sampler": cfg.sampler,
      "compute_dtype": cfg.compute_dtype,
      "step_s_median": step_s,
      "step_s_min": min(step_times),
      # CPU seconds of this process (all threads) per step: on a shared machine the wall time
      # includes waiting for cores other processes hold.
      "step_cpu_s_median": statistics.median(step_cpu),
      "loadavg_1min": [load_before, os.getloadavg()[0]],
      "forward_s_median": fwd_s,
      "train_slides_per_s": cfg.batch / step_s,
      "forward_slides_per_s": cfg.batch / fwd_s,
      "compile_train_s": compile_s,
      "compile_forward_s": compile_fwd_s,
      "peak_rss_mb": _rss_mb(),
      "peak_device_mb": _device_peak_mb(),
      "xla_flops_per_step": flops,
      "loss": float(metrics["loss"]),
      "backend": jax.default_backend(),
      "device": str(jax.devices()[0].device_kind),
      "jax": jax.__version__,
      "n_patches": cfg.n_patches,
      "feature_dim": cfg.feature_dim,
      "steps": cfg.steps,
  }


def _run_child(cfg: BenchConfig) -> tuple[Optional[dict[str, Any]], str]:
  """Measures `cfg` in a fresh interpreter; (record or None, error text)."""
  args = [sys.executable, "-m", "benchmarks.throughput", "--child",
          json.dumps(dataclasses.asdict(cfg))]
  proc = subprocess.run(args, capture_output=True, text=True, env=os.environ.copy())
  for line in proc.stdout.splitlines()[::-1]:
    if line.startswith("{"):
      return json.loads(line), ""
  err = proc.stderr.strip().splitlines()
  return None, f"exit {proc.returncode}: {err[-1] if err else 'no output'}"


def _table(records: list[dict[str, Any]]) -> str:
  cols = [("batch", "{:>5}"), ("attention_path", "{:>9}"), ("compute_dtype", "{:>8}"),
          ("step_s_median", "{:>8.3f}"), ("train_slides_per_s", "{:>8.2f}"),
          ("forward_s_median", "{:>8.3f}"), ("forward_slides_per_s", "{:>8.2f}"),
          ("compile_train_s", "{:>8.1f}"), ("peak_rss_mb", "{:>8.0f}")]
  heads = ["batch", "impl", "dtype", "step s", "train/s", "fwd s", "fwd/s", "compile", "RSS MB"]
  lines = ["  ".join(f"{h:>{len(f.format(records[0][c]))}}" for h, (c, f) in zip(heads, cols))]
  for r in records:
    lines.append("  ".join(f.format(r[c]) for c, f in cols))
  return "\n".join(lines)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8])
  p.add_argument("--impl", nargs="+", default=["auto"],
                 choices=["auto", "reference", "chunked", "fused", "native"])
  p.add_argument("--query-tile", type=int, default=BenchConfig.query_tile)
  p.add_argument("--sampler", default=BenchConfig.sampler, choices=["gather", "matmul"])
  p.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "bfloat16"])
  p.add_argument("--patches", type=int, default=FULL_SHAPE["n_patches"],
                 help="tokens per slide (a square number); default the paper's 2500")
  p.add_argument("--feature-dim", type=int, default=FULL_SHAPE["feature_dim"])
  p.add_argument("--steps", type=int, default=BenchConfig.steps)
  p.add_argument("--warmup", type=int, default=BenchConfig.warmup)
  p.add_argument("--json", action="store_true", help="print only JSON lines")
  p.add_argument("--child", help=argparse.SUPPRESS)
  args = p.parse_args(argv)

  if args.child:
    print(json.dumps(measure(BenchConfig(**json.loads(args.child)))), flush=True)
    return

  records = []
  for impl in args.impl:
    for dtype in args.dtype:
      for b in args.batch_sizes:
        cfg = BenchConfig(batch=b, n_patches=args.patches, feature_dim=args.feature_dim,
                          attention_impl=impl, query_tile=args.query_tile, sampler=args.sampler,
                          compute_dtype=dtype, steps=args.steps, warmup=args.warmup)
        record, err = _run_child(cfg)
        if record is None:  # e.g. out of memory: skip what does not fit
          print(f"batch {b} ({impl}, {dtype}) skipped: {err}", file=sys.stderr, flush=True)
          continue
        records.append(record)
        print(json.dumps(record), flush=True)
  if not args.json and records:
    print()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"backend {records[0]['backend']} ({records[0]['device']}), jax {records[0]['jax']}")
    print(_table(records))


if __name__ == "__main__":
  main()
