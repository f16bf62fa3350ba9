"""Deviceless TPU compile of the CPB attention's train step: Pallas kernel vs the XLA paths.

Compiles, with the real TPU compiler and no TPU (libtpu, `jax.experimental.topologies`), the
forward + backward of one deformable-attention block at the model's full shape (50 x 50 = 2500
queries over the 12 x 12 = 144 sampled keys of each of 8 offset groups, 8 heads of 64, the
original's CPB MLP 2 -> 32 -> 32 -> 1, attention dropout 0.1), data-parallel over the topology's
chips inside `jax.shard_map`, and prints one JSON line per (path, dtype) with the compiled
program's per-chip memory and cost analysis.

  python -m benchmarks.pallas_attention_aot                       # v5e:2x2, 8 slides per chip
  python -m benchmarks.pallas_attention_aot --what model --paths pallas --dtypes float32

`--what model` compiles the whole subspace model's loss + gradient (both branches, the trainer's
`loss_fn`, gradients all-reduced; no optimizer update) instead of one attention block; it needs
the XLA depthwise conv, so it sets SMML_JAX_NATIVE=0.

Cost analysis of XLA programs counts a while loop's body once: `fused` walks its query tiles with
`lax.map`, so its numbers undercount by about the number of tiles (`loop_undercount`). The
`fused-1tile` path is `fused` with a single tile (no loop), counted in full; `fused-tile` compiles
one of `fused`'s tiles (its query count, nothing else changed) and multiplies its cost by the
number of tiles, an estimate of `fused`'s true cost (its memory is one tile's). The Pallas kernels are
counted from their `pl.CostEstimate` (the MXU FLOPs they execute, their HBM reads and writes).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

# Public peak numbers per chip (bf16 FLOP/s, HBM bytes/s, HBM bytes):
# https://cloud.google.com/tpu/docs/v5e, /v5p, /v6e ("System architecture" tables).
CHIPS = {"v5e": (197e12, 819e9, 16 * 2**30), "v5p": (459e12, 2765e9, 95 * 2**30), "v6e": (918e12, 1640e9, 32 * 2**30)}

# MXU side (a weight-stationary systolic array of MXU x MXU): 128 on v5e and v5p, 256 on v6e
# (Trillium), https://cloud.google.com/tpu/docs/v6e ("System architecture").
MXU = {"v5e": 128, "v5p": 128, "v6e": 256}
# The Pallas kernels compiled for TPU round float32 matmul operands to bf16 (one pass, as XLA's
# default precision does) unless `exact`: the MXU model counts one pass in both dtypes.

SIDE, KEYS, GROUPS, HEADS, DIM_HEAD, CPB_WIDTHS = 50, 144, 8, 8, 64, (2, 32, 32, 1)


def _attention_step(path, dtype, mesh, per_chip_batch, chip):
  """(jitted step, abstract arguments) for one attention block's loss + gradient."""
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  from smml_jax.models.deform_attention import DeformAttentionConfig
  from smml_jax.ops import pallas_attention_mlp as mlp
  from smml_jax.ops.attention import cpb_attention
  from smml_jax.ops.cpb import query_positions
  from smml_jax.ops.pallas_attention import pallas_cpb_attention

  n = SIDE * SIDE
  if path in ("fused", "fused-tile"):
    tile = DeformAttentionConfig().tile_for(per_chip_batch * GROUPS, KEYS)
    n = tile if path == "fused-tile" else n
  elif path == "fused-1tile":
    tile = n
  else:
    tile = DeformAttentionConfig(attention_impl=path).tile_for(per_chip_batch * GROUPS, KEYS)
  impl = "fused" if path.startswith("fused") else path
  pos_q = query_positions(SIDE, 2)[:n]
  chips = mesh.devices.size

  def loss(q, k, v, pos_k, params, rng):
    args = (q, k, v, pos_q, pos_k, params)
    if impl == "pallas":  # packed for this chip's MXU
      pack = mlp.pack_for(MXU[chip], CPB_WIDTHS)
      fn = lambda *a, **kw: pallas_cpb_attention(*a, mxu_pack=pack, **kw)
    else:
      fn = lambda *a, **kw: cpb_attention(*a, implementation=impl, **kw)
    out, mass = fn(*args, dropout_rate=0.1, dropout_rng=rng, query_tile=tile, cpb_dtype=dtype)
    return jnp.sum(out.astype(jnp.float32) ** 2) + jnp.sum(mass**2)

  def per_chip(q, k, v, pos_k, params, rng):
    rng = jax.random.fold_in(rng[0], jax.lax.axis_index("data"))
    grads = jax.grad(loss, argnums=(0, 1, 2, 3, 4))(q, k, v, pos_k, params, rng)
    return grads[:4] + (jax.lax.psum(grads[4], "data"),)

  step = jax.jit(
    jax.shard_map(
      per_chip, mesh=mesh, in_specs=(P("data"),) * 4 + (P(), P()), out_specs=(P("data"),) * 4 + (P(),), check_vma=False
    )
  )
  data, rep = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
  b = per_chip_batch * chips
  spec = lambda shape, dt=jnp.float32, s=data: jax.ShapeDtypeStruct(shape, dt, sharding=s)
  params = [(spec((i, o), s=rep), spec((o,), s=rep)) for i, o in zip(CPB_WIDTHS[:-1], CPB_WIDTHS[1:])]
  args = (
    spec((b, HEADS, n, DIM_HEAD), dtype),
    spec((b, HEADS, KEYS, DIM_HEAD), dtype),
    spec((b, HEADS, KEYS, DIM_HEAD), dtype),
    spec((b, GROUPS, KEYS, 2)),
    params,
    jax.ShapeDtypeStruct((1, 2), jnp.uint32, sharding=rep),
  )
  return step, args, tile


def _model_step(path, dtype, mesh, per_chip_batch, chip):
  """(jitted step, abstract arguments) for the subspace model's loss + gradient."""
  import dataclasses

  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  from benchmarks.throughput import FULL_SHAPE
  from smml_jax.models.registry import build_model
  from smml_jax.train.steps import LossConfig, loss_fn

  impl = "fused" if path.startswith("fused") else path
  options = dict(attention_impl=impl, query_tile=SIDE * SIDE if path == "fused-1tile" else 0)
  spec = build_model(
    "subspace",
    num_classes=FULL_SHAPE["num_classes"],
    n_genes_tumour=FULL_SHAPE["n_genes_tumour"],
    n_genes_micro=FULL_SHAPE["n_genes_micro"],
    feature_dim=FULL_SHAPE["feature_dim"],
    options=options,
  )
  if dtype == jnp.bfloat16:
    spec = dataclasses.replace(spec, module=spec.module.clone(dtype=jnp.bfloat16))
  cfg = LossConfig(task="diagnosis", consistency_weight=0.5, coordination=False)
  chips = mesh.devices.size
  b = per_chip_batch * chips
  batch = {
    "patches": (b, FULL_SHAPE["n_patches"], FULL_SHAPE["feature_dim"]),
    "genes_tumour": (b, FULL_SHAPE["n_genes_tumour"]),
    "genes_micro": (b, FULL_SHAPE["n_genes_micro"]),
  }
  one = {k: jax.ShapeDtypeStruct((1,) + s[1:], jnp.float32) for k, s in batch.items()}
  params = jax.eval_shape(
    lambda x: spec.module.init({"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(0)}, x)["params"], one
  )

  def per_chip(params, batch, rng):
    rng = jax.random.fold_in(rng[0], jax.lax.axis_index("data"))
    grads = jax.grad(lambda p: loss_fn(p, batch, rng, spec=spec, cfg=cfg, train=True)[0])(params)
    return jax.lax.pmean(grads, "data")

  step = jax.jit(jax.shard_map(per_chip, mesh=mesh, in_specs=(P(), P("data"), P()), out_specs=P(), check_vma=False))
  data, rep = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
  args_batch = {k: jax.ShapeDtypeStruct(s, jnp.float32, sharding=data) for k, s in batch.items()}
  args_batch["diagnosis"] = jax.ShapeDtypeStruct((b,), jnp.int32, sharding=data)
  args_batch["mask"] = jax.ShapeDtypeStruct((b,), jnp.bool_, sharding=data)
  args_params = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=rep), params)
  return step, (args_params, args_batch, jax.ShapeDtypeStruct((1, 2), jnp.uint32, sharding=rep)), None


def measure(what, path, dtype_name, topology_name, per_chip_batch):
  """One JSON-able record: compile the step for `topology_name` and read its analyses."""
  import jax.numpy as jnp
  from jax.experimental import topologies

  topology = topologies.get_topology_desc(platform="tpu", topology_name=topology_name)
  chips = len(topology.devices)
  mesh = topologies.make_mesh(topology, (chips,), ("data",))
  dtype = jnp.dtype(dtype_name)
  build = _attention_step if what == "attention" else _model_step
  chip = topology_name.split(":")[0]
  step, args, tile = build(path, dtype, mesh, per_chip_batch, chip)
  record = dict(
    what=what,
    topology=topology_name,
    chips=chips,
    per_chip_batch=per_chip_batch,
    attention_path=path,
    dtype=dtype_name,
    query_tile=tile,
    compiled=False,
  )
  start = time.perf_counter()
  try:
    compiled = step.lower(*args).compile()
  except Exception as e:  # reported, not hidden: the record says what failed
    record.update(error=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")
    return record
  record.update(compiled=True, compile_s=round(time.perf_counter() - start, 1))
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  mb = lambda x: round(x / 2**20, 1)
  flops, nbytes = float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))
  if path == "fused-tile":  # one tile compiled, counted as many times as lax.map runs it
    tiles = -(-SIDE * SIDE // tile)
    flops, nbytes = flops * tiles, nbytes * tiles
    record.update(tiles=tiles)
  peak_flops, hbm_bw, _ = CHIPS[topology_name.split(":")[0]]
  record.update(
    temp_mb=mb(mem.temp_size_in_bytes),
    argument_mb=mb(mem.argument_size_in_bytes),
    output_mb=mb(mem.output_size_in_bytes),
    gflops=round(flops / 1e9, 2),
    gbytes=round(nbytes / 1e9, 3),
    mb_per_slide=mb(nbytes / per_chip_batch),
    transcendentals=float(cost.get("transcendentals", 0.0)),
    est_step_s=round(max(flops / peak_flops, nbytes / hbm_bw), 5),
    bound="flops" if flops / peak_flops > nbytes / hbm_bw else "hbm",
    loop_undercount=path == "fused",
    pallas_kernels=compiled.as_text().count('custom_call_target="tpu_custom_call"'),
  )
  if path == "pallas":
    record.update(_mxu_estimate(topology_name.split(":")[0], dtype, per_chip_batch, tile, flops, nbytes))
  return record


def _mxu_estimate(chip, dtype, per_chip_batch, tile, flops, nbytes):
  """The roofline with the CPB MLP's hidden matmuls timed by MXU weight-tile passes
  (`pallas_attention_mlp.mxu_passes_per_pair`, the packed kernel's passes) rather than FLOPs at
  peak: a 32-wide layer fills at most 1/4 of a 128 x 128 MXU, packed or not. `est_mxu_step_s`
  adds that time to the counted FLOPs at peak (which count the hidden layers once more:
  conservative); `roofline_fraction` = counted (useful) FLOPs at peak / est_mxu_step_s (the HBM
  side is far from binding). The kernels compiled for TPU take one bf16 pass per matmul in
  float32 too (`pallas_cpb_attention(exact=None)`)."""
  from smml_jax.ops import pallas_attention_mlp as mlp
  from smml_jax.ops.pallas_attention import keeps_hidden

  peak_flops, hbm_bw, _ = CHIPS[chip]
  mxu = MXU[chip]
  pairs = per_chip_batch * GROUPS * -(-SIDE * SIDE // tile) * tile * KEYS
  pack = mlp.packing(mlp.pack_for(mxu, CPB_WIDTHS), mlp.key_steps(KEYS)[0], tile)
  hidden_bytes = mlp.hidden_scratch_bytes(CPB_WIDTHS, pack, KEYS, tile, dtype)
  keep_hidden = keeps_hidden(CPB_WIDTHS, pack, KEYS, tile, dtype)
  passes = mlp.mxu_passes_per_pair(CPB_WIDTHS, mxu, pack, keep_hidden)
  pushes_per_s = peak_flops / (2 * mxu * mxu)
  mxu_s = pairs * passes / pushes_per_s
  est = max(mxu_s + flops / peak_flops, nbytes / hbm_bw)
  return dict(
    mxu=mxu,
    mxu_pack=pack,
    keep_hidden=keep_hidden,
    hidden_vmem_mb=round(hidden_bytes / 2**20, 2),
    mxu_passes_per_pair=passes,
    mlp_mxu_s=round(mxu_s, 5),
    est_mxu_step_s=round(est, 5),
    roofline_fraction=round(flops / peak_flops / est, 3),
  )


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--topology", default="v5e:2x2")
  parser.add_argument("--per-chip-batch", type=int, default=8)
  parser.add_argument("--what", choices=["attention", "model"], default="attention")
  parser.add_argument(
    "--paths",
    default="fused,fused-1tile,pallas",
    help="comma-separated: fused, fused-1tile, reference, chunked, pallas",
  )
  parser.add_argument("--dtypes", default="float32,bfloat16")
  args = parser.parse_args(argv)
  if args.topology.split(":")[0] not in CHIPS:
    parser.error(f"--topology: expected one of {sorted(CHIPS)} (as v5e:2x2), got {args.topology!r}")
  # Compiling needs no TPU; libtpu's single-process lock would otherwise refuse a second user.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  if args.what == "model":
    os.environ["SMML_JAX_NATIVE"] = "0"
  for path in args.paths.split(","):
    for dtype in args.dtypes.split(","):
      print(json.dumps(measure(args.what, path, dtype, args.topology, args.per_chip_batch)), flush=True)


if __name__ == "__main__":
  sys.exit(main())
