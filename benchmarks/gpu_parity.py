"""Attention paths against `reference` on the default backend (a GPU under `gpu_check.sh`).

  python -m benchmarks.gpu_parity            # small and full shape, float32; exit 1 on a mismatch

For each implementation that `cpb_attention` can run on this backend, the loss value and all
gradients (q, k, v, pos_k, CPB params) are compared with `reference` on the same backend
(<= 1e-5 relative per leaf in float32, with the tests' floor for near-zero leaves), and a bf16
run with `cpb_dtype=bfloat16` against float32 (<= 3e-2 relative). One JSON line per check.
`pallas` on a GPU runs the Triton kernels of `ops/pallas_attention_gpu.py`; its line records
`triton_kernels`, the Triton custom calls in the lowered program (2: forward and backward; 0
would mean Pallas' interpreter ran instead), and a `pallas` line without both is a failure.
An implementation the backend refuses is reported as `refused` with the reason, not counted as
a failure.
"""

from __future__ import annotations

import argparse
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from smml_jax.ops.attention import cpb_attention
from smml_jax.ops.cpb import query_positions

SHAPES = {
  "small": dict(b=2, groups=2, heads=1, side=12, m=16, dh=16),
  "full": dict(b=1, groups=8, heads=1, side=50, m=144, dh=64),
}


def _inputs(b, groups, heads, side, m, dh, seed=0):
  rng = np.random.default_rng(seed)
  f = lambda *s, scale=1.0: jnp.asarray(scale * rng.normal(size=s), jnp.float32)
  h = groups * heads
  q, k, v = f(b, h, side * side, dh, scale=0.5), f(b, h, m, dh), f(b, h, m, dh)
  widths = (2, 32, 32, heads)
  params = [(f(i, o, scale=0.7 if i == 2 else 0.4), f(o, scale=0.1)) for i, o in zip(widths[:-1], widths[1:])]
  return (q, k, v, jnp.tanh(f(b, groups, m, 2)), params), query_positions(side, 2)


def _value_and_grads(impl, args, pos_q, cpb_dtype=jnp.float32):
  def loss(q, k, v, pos_k, params):
    out, mass = cpb_attention(
      q,
      k,
      v,
      pos_q,
      pos_k,
      params,
      implementation=impl,
      query_tile=256,
      cpb_dtype=cpb_dtype,
      platform=jax.default_backend(),
    )
    return jnp.sum(jnp.sin(out.astype(jnp.float32))) + jnp.sum(mass**2)

  fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4)))
  text = fn.lower(*args).as_text()
  # the custom call of jaxlib <= 0.10.2's Pallas Triton lowering, and of later ones
  triton = text.count("@__gpu$xla.gpu.triton") + text.count("@triton_kernel_call")
  return [np.asarray(x, np.float64) for x in jax.tree.leaves(fn(*args))], triton


def _excess(got, want, rel):
  """max over leaves of ||a - b|| / max(rel ||b||, rel ||all of want||): <= 1 passes (the tests'
  rule: a leaf that is zero up to rounding, like the last CPB bias, is held to the whole's norm)."""
  floor = rel * np.sqrt(sum(np.sum(b**2) for b in want))
  return max(float(np.linalg.norm(a - b) / max(rel * np.linalg.norm(b), floor)) for a, b in zip(got, want))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--impl", nargs="+", default=["fused", "chunked", "pallas"])
  parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
  args = parser.parse_args(argv)
  # XLA on a GPU multiplies float32 in TF32 by default (10-bit mantissa): parity is checked at
  # full float32 precision, as the CPU tests check it.
  jax.config.update("jax_default_matmul_precision", "highest")
  failed = False
  for shape in args.shapes:
    inputs, pos_q = _inputs(**SHAPES[shape])
    want, _ = _value_and_grads("reference", inputs, pos_q)
    for impl in args.impl:
      record = dict(backend=jax.default_backend(), device=str(jax.devices()[0].device_kind), shape=shape, impl=impl)
      try:
        got, triton = _value_and_grads(impl, inputs, pos_q)
        got16, _ = _value_and_grads(impl, inputs, pos_q, cpb_dtype=jnp.bfloat16)
      except ValueError as e:  # the dispatch refuses what cannot run here, naming why
        print(json.dumps({**record, "status": "refused", "reason": str(e)}), flush=True)
        continue
      excess32, excess16 = _excess(got, want, 1e-5), _excess(got16, want, 3e-2)
      ok = excess32 <= 1 and excess16 <= 1 and (impl != "pallas" or triton >= 2)
      failed |= not ok
      print(
        json.dumps(
          {
            **record,
            "status": "ok" if ok else "MISMATCH",
            "error_over_tolerance_f32": excess32,
            "error_over_tolerance_bf16": excess16,
            "triton_kernels": triton,
          }
        ),
        flush=True,
      )
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
