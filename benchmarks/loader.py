"""Input-pipeline throughput: slides/s of the trainer's batches on a synthetic cohort.

The cohort is synthetic at the paper's full slide shape (a 50 x 50 grid of 1024-d patch features,
59 tumour + 361 micro genes), built once into `--data-dir` (TFDS records, read without
TensorFlow). One pass reads every training slide in shuffled batches of `--batch-size` through
the trainer's own iterator (record reads, decode, stacking, the fitted preprocessor, the `mask`
field) and, with `--device`, places each batch on the device(s) as the trainer does (sharded over
the mesh, in grain's device-prefetch thread). The first pass warms the page cache; the median of
the next `--passes` is reported.

The hand-written pipeline grain replaced is measured by the same script at commit 52ede05
(`git archive 52ede05 | tar -x -C /tmp/old && cd /tmp/old && python -m benchmarks.loader ...`);
both are in benchmarks/RESULTS.md.

  python -m benchmarks.loader --data-dir /tmp/loader_bench            # table
  python -m benchmarks.loader --data-dir /tmp/loader_bench --json     # one JSON line
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import numpy as np

FULL_SLIDE = dict(grid_side=50, feature_dim=1024, n_genes_tumour=59, n_genes_micro=361)


def cohort_spec(n_patients: int) -> dict[str, Any]:
  return {"layout": "synthetic", "n_patients": n_patients, "seed": 0, **FULL_SLIDE}


def epoch_batches(cohort, indices: np.ndarray, preprocessor, batch_size: int, epoch: int, mesh):
  """One training epoch from the trainer's pipeline: host batches, or on the mesh with `mesh`."""
  from smml_jax.data import pipeline
  from smml_jax.train import sharding

  host = pipeline.BatchIterator(
    cohort.source, indices, batch_size, seed=0, epoch=epoch, shuffle=True, drop_remainder=True, preprocess=preprocessor
  )
  if mesh is None:
    return iter(host)
  return pipeline.prefetch_to_device(host, put=lambda b: {**sharding.shard_batch(b, mesh), "mask": b["mask"]})


def measure(data_dir: str, n_patients: int, batch_size: int, passes: int, device: bool) -> dict[str, Any]:
  import jax

  from smml_jax.data import normalise, spec as spec_lib
  from smml_jax.train import sharding

  cohort = spec_lib.load_cohort(cohort_spec(n_patients), data_dir)
  indices = np.arange(len(cohort))
  preprocessor = normalise.fit_preprocessor(cohort, indices)
  mesh = sharding.make_mesh()
  times, n = [], 0
  for epoch in range(passes + 1):
    t0 = time.perf_counter()
    n = 0
    for batch in epoch_batches(cohort, indices, preprocessor, batch_size, epoch, mesh if device else None):
      jax.block_until_ready([v for v in batch.values() if isinstance(v, jax.Array)])
      n += int(np.asarray(batch["mask"]).sum())
    if epoch:  # pass 0 warms the page cache
      times.append(time.perf_counter() - t0)
  seconds = statistics.median(times)
  return {
    "pipeline": PIPELINE,
    "slides": n,
    "batch_size": batch_size,
    "device": device,
    "slide_mb": round(np.prod([FULL_SLIDE["grid_side"] ** 2, FULL_SLIDE["feature_dim"]]) * 4 / 2**20, 2),
    "seconds_per_pass": round(seconds, 3),
    "slides_per_s": round(n / seconds, 1),
    "passes": passes,
    "backend": jax.default_backend(),
  }


PIPELINE = "grain (MapDataset, thread reads + prefetch)"


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--data-dir", required=True, help="where the synthetic records are built")
  parser.add_argument("--n-patients", type=int, default=64)
  parser.add_argument("--batch-size", type=int, default=8)
  parser.add_argument("--passes", type=int, default=3)
  parser.add_argument("--device", action="store_true", help="also place batches on the device")
  parser.add_argument("--json", action="store_true")
  args = parser.parse_args(argv)
  row = measure(args.data_dir, args.n_patients, args.batch_size, args.passes, args.device)
  if args.json:
    print(json.dumps(row))
  else:
    print(
      f"{row['pipeline']}: {row['slides_per_s']} slides/s ({row['slides']} slides of "
      f"{row['slide_mb']} MB in {row['seconds_per_pass']} s, batch {row['batch_size']}, "
      f"{'to ' + row['backend'] if row['device'] else 'host only'})"
    )


if __name__ == "__main__":
  main()
