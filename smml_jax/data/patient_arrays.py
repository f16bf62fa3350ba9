"""Patient-level genomic records held in memory, and their shuffled, padded epoch batches.

The in-memory counterpart of `data.pipeline` for cohorts small enough to sit in host memory (the
TCGA GBM-LGG tables): a batch is a dict of numpy arrays with the pipeline's field names and a
`mask` (False = padding), with no `patches` or `coords` (bag-free).
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np

# Arrays run through the eval step are padded to a multiple of this many rows, so splits of
# similar size share one compilation.
ROW_BUCKET = 128


@dataclasses.dataclass(frozen=True)
class GenomicArrays:
  """One split's patients. genes_tumour (N, Gt), genes_micro (N, Gm) float32 (normalised);
  target (N,) int64: class code, or survival bin; time (N,) float32 days; event (N,) int64."""

  genes_tumour: np.ndarray
  genes_micro: np.ndarray
  target: np.ndarray
  time: np.ndarray
  event: np.ndarray

  def __post_init__(self):
    n = len(self.target)
    for name in ("genes_tumour", "genes_micro", "time", "event"):
      if len(getattr(self, name)) != n:
        raise ValueError(f"GenomicArrays: {name} has {len(getattr(self, name))} rows, target {n}")

  def __len__(self) -> int:
    return len(self.target)

  def truth(self, label_field: str) -> dict[str, np.ndarray]:
    """The outcomes under the data pipeline's names: the task's `label_field` (the target),
    `surv_time` and `event`."""
    return {
      label_field: np.asarray(self.target, np.int32),
      "surv_time": np.asarray(self.time, np.float32),
      "event": np.asarray(self.event, np.int32),
    }

  def fields(self, label_field: str) -> dict[str, np.ndarray]:
    """Every row as a batch without `mask`: the gene inputs and `truth(label_field)`."""
    return {
      "genes_tumour": np.asarray(self.genes_tumour, np.float32),
      "genes_micro": np.asarray(self.genes_micro, np.float32),
      **self.truth(label_field),
    }


def epoch_batches(n: int, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """A shuffled epoch: indices (S, B) int32 and mask (S, B) bool (False = padding, index 0)."""
  perm = rng.permutation(n)
  steps = -(-n // batch_size)
  idx = np.zeros(steps * batch_size, np.int32)
  idx[:n] = perm
  mask = np.arange(steps * batch_size) < n
  return idx.reshape(steps, batch_size), mask.reshape(steps, batch_size)


def iterate_batches(
  fields: dict[str, np.ndarray], idx: np.ndarray, mask: np.ndarray
) -> Iterator[dict[str, np.ndarray]]:
  """The batches of one epoch: each row of `idx` (S, B) gathered from `fields`, with its mask."""
  for rows, m in zip(idx, mask):
    yield dict({k: v[rows] for k, v in fields.items()}, mask=m)


def padded(fields: dict[str, np.ndarray], bucket: int = ROW_BUCKET) -> dict[str, np.ndarray]:
  """Every row as one batch, zero-padded to a multiple of `bucket` rows, with its mask."""
  n = len(next(iter(fields.values())))
  rows = -(-max(n, 1) // bucket) * bucket
  out = {k: np.pad(v, [(0, rows - n)] + [(0, 0)] * (v.ndim - 1)) for k, v in fields.items()}
  out["mask"] = np.arange(rows) < n
  return out
