"""CPU seconds of the native CPB kernels alone at the full batch-2 shape of one branch.

  python -m benchmarks.native_cpb_cpu [--repeats 9]

Query positions of the 50 x 50 lattice, 2 x 8 offset-group rows of 144 keys jittered around the
12 x 12 offset lattice, the original's 2 -> 32 -> 32 -> 1 MLP (torch default init). Prints the
median and minimum process CPU seconds (all threads) of the forward kernel and of forward +
backward: on a shared machine CPU seconds, run interleaved against another checkout, compare
kernels where wall times do not (benchmarks/RESULTS.md, issue 17).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from smml_jax.ops import native, native_cpb
from smml_jax.ops.cpb import query_positions


def _inputs(seed: int = 0, batch: int = 2, groups: int = 8, side: int = 50, keys_side: int = 12, width: int = 32):
  rng = np.random.default_rng(seed)
  lattice = np.stack(np.meshgrid(np.arange(keys_side), np.arange(keys_side), indexing="xy"), -1).reshape(-1, 2)
  jittered = (lattice + rng.uniform(-1, 1, (batch, groups, keys_side**2, 2))) / (keys_side - 1) * 2 - 1
  uniform = lambda fan_in, shape: jnp.asarray(rng.uniform(-(fan_in**-0.5), fan_in**-0.5, shape), jnp.float32)
  params = [
    (uniform(2, (2, width)), uniform(2, (width,))),
    (uniform(width, (width, width)), uniform(width, (width,))),
    (uniform(width, (width, 1)), uniform(width, (1,))),
  ]
  cotangent = jnp.asarray(rng.normal(size=(batch, groups, side**2, keys_side**2)), jnp.float32)
  return query_positions(side, 2), jnp.asarray(jittered, jnp.float32), params, cotangent


def _cpu_seconds(fn, repeats: int) -> list[float]:
  jax.block_until_ready(fn())  # compile and warm up
  out = []
  for _ in range(repeats):
    c0 = time.process_time()
    jax.block_until_ready(fn())
    out.append(time.process_time() - c0)
  return out


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--repeats", type=int, default=9)
  args = p.parse_args()
  if args.repeats < 1:
    p.error(f"--repeats: expected a positive integer, got {args.repeats}")
  if not native.load():
    raise SystemExit(f"native kernels unavailable: {native.unavailable_reason()}")
  pos_q, pos_k, params, cotangent = _inputs()
  bias = lambda pk, ps: native_cpb.relative_position_bias(pos_q, pk, ps)
  forward = jax.jit(bias)
  backward = jax.jit(jax.value_and_grad(lambda pk, ps: jnp.sum(bias(pk, ps) * cotangent), argnums=(0, 1)))
  for name, fn in (("forward", lambda: forward(pos_k, params)), ("forward+backward", lambda: backward(pos_k, params))):
    cpu = _cpu_seconds(fn, args.repeats)
    print(f"{name}: CPU s median {statistics.median(cpu):.3f}, min {min(cpu):.3f} ({args.repeats} runs)", flush=True)


if __name__ == "__main__":
  main()
