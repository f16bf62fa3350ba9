"""Batches of slides for the jit-compiled step, read by `grain`.

`BatchIterator` plans an epoch as a pure function of (seed, epoch): a permutation of `indices`
cut into global batches, process `process_index` taking its contiguous 1/process_count slice of
each. The last partial batch is dropped or padded (padding repeats real examples and is flagged
False in `mask`); every batch carries `mask` (B,) bool. The plan becomes a `grain.MapDataset`
(record reads, decoding, stacking, preprocessing) read by grain's thread pool with prefetch;
its iterator's `get_state()` / `set_state()` is the position within the epoch, which the trainer
checkpoints so a resumed run continues mid-epoch with the very batches it would have seen.
`prefetch_to_device` keeps batches in flight on the device(s), also checkpointably.
"""

from __future__ import annotations

import atexit
import weakref
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import grain
import numpy as np

from smml_jax.data.features import decode_example

Batch = dict[str, np.ndarray]

# Iterators still alive at exit are closed while the modules are intact: grain's __del__ calls
# close() again during interpreter teardown, where grain 0.2.18's thread-prefetch close() reads a
# module global already set to None and prints an ignored AttributeError.
_OPEN: "weakref.WeakSet[Any]" = weakref.WeakSet()


@atexit.register
def _close_open_iterators() -> None:
  for iterator in list(_OPEN):
    close(iterator)
    iterator.close = lambda: None  # what __del__ calls at teardown


def _track(iterator: grain.DatasetIterator) -> grain.DatasetIterator:
  _OPEN.add(iterator)
  return iterator


def jax_process_shard() -> tuple[int, int]:
  """(process index, process count) of this JAX process, as grain shards by it."""
  options = grain.sharding.ShardByJaxProcess()
  return options.shard_index, options.shard_count


def _stack(examples: Sequence[Mapping[str, np.ndarray]]) -> Batch:
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


class BatchIterator:
  """Iterable over one epoch of batches (dicts of stacked numpy arrays, strings as unicode).

  `iter()` returns a grain DatasetIterator: `get_state()` after k batches, given to
  `set_state()` of a fresh iterator of the same epoch, resumes at batch k.

  Args:
    source: random-access records (tfds data source or any sequence of dicts).
    indices: slide indices to draw from (e.g. make_splits(...)['train']).
    batch_size: GLOBAL batch size; each process gets batch_size // process_count examples.
    seed, epoch: the permutation is a function of (seed, epoch) only.
    shuffle: permute the indices (otherwise keep their order).
    drop_remainder: drop the last partial global batch instead of padding it.
    preprocess: applied to each stacked batch (e.g. a fitted Preprocessor).
    process_index, process_count: this host's place among the training processes
      (`jax_process_shard()` gives the JAX process's).
    num_threads: grain reader threads (batches read concurrently). prefetch: batches kept ready
      (at least num_threads).
  """

  def __init__(
    self,
    source: Any,
    indices: Sequence[int],
    batch_size: int,
    *,
    seed: int = 0,
    epoch: int = 0,
    shuffle: bool = True,
    drop_remainder: bool = True,
    preprocess: Callable[[Batch], Batch] | None = None,
    process_index: int = 0,
    process_count: int = 1,
    num_threads: int = 4,
    prefetch: int = 2,
  ):
    if batch_size <= 0 or batch_size % process_count:
      raise ValueError(f"batch_size {batch_size} must be positive and divisible by process_count {process_count}")
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    self.source, self.batch_size = source, batch_size
    self.indices = np.asarray(indices, np.int64)
    self.seed, self.epoch, self.shuffle = seed, epoch, shuffle
    self.drop_remainder, self.preprocess = drop_remainder, preprocess
    self.process_index, self.process_count = process_index, process_count
    self.num_threads, self.prefetch = num_threads, prefetch

  @property
  def local_batch_size(self) -> int:
    return self.batch_size // self.process_count

  def __len__(self) -> int:
    n = len(self.indices)
    return n // self.batch_size if self.drop_remainder else -(-n // self.batch_size)

  def plan(self) -> list[tuple[np.ndarray, np.ndarray]]:
    """This process's (record indices, mask) per batch of the epoch."""
    order = self.indices
    if self.shuffle:
      order = np.random.default_rng([self.seed, self.epoch]).permutation(order)
    out = []
    local = self.local_batch_size
    lo = self.process_index * local
    for b in range(len(self)):
      chunk = order[b * self.batch_size : (b + 1) * self.batch_size]
      mask = np.ones(self.batch_size, np.bool_)
      if len(chunk) < self.batch_size:  # pad by cycling real examples, masked out
        mask[len(chunk) :] = False
        chunk = np.resize(chunk, self.batch_size)
      out.append((chunk[lo : lo + local], mask[lo : lo + local]))
    return out

  def _read(self, idx: np.ndarray) -> list[Mapping]:
    getitems = getattr(self.source, "__getitems__", None)
    if getitems is not None:  # one batched read (array_record reads them in parallel)
      return list(getitems([int(i) for i in idx]))
    return [self.source[int(i)] for i in idx]

  def _make(self, planned: tuple[np.ndarray, np.ndarray]) -> Batch:
    idx, mask = planned
    batch = _stack([decode_example(e) for e in self._read(idx)])
    batch["mask"] = mask
    return self.preprocess(batch) if self.preprocess is not None else batch

  def dataset(self) -> grain.IterDataset:
    """The epoch as a grain dataset: planned batches read by `num_threads` threads."""
    threads = max(1, self.num_threads)  # grain uses no more threads than buffered batches
    options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(threads, self.prefetch))
    return grain.MapDataset.source(self.plan()).map(self._make).to_iter_dataset(options)

  def __iter__(self) -> grain.DatasetIterator:
    return _track(iter(self.dataset()))


def prefetch_to_device(
  batches: grain.IterDataset | BatchIterator, put: Optional[Callable[[Batch], dict[str, Any]]] = None, size: int = 2
) -> grain.DatasetIterator:
  """An iterator keeping `size` batches placed on the device(s) ahead of the consumer.

  `put` places one host batch (e.g. sharded over the mesh's batch axis with
  `jax.make_array_from_process_local_data`); by default numeric fields go to the default device
  and string fields stay on the host. The iterator's state counts the batches consumed, not those
  in flight, so it checkpoints like the host iterator's.
  """
  if isinstance(batches, BatchIterator):
    batches = batches.dataset()
  put = put or _default_put
  return _track(iter(grain.experimental.ThreadPrefetchIterDataset(batches.map(put), prefetch_buffer_size=max(1, size))))


def _default_put(batch: Batch) -> dict[str, Any]:
  import jax  # local: the data layer does not need jax otherwise

  return {k: v if v.dtype.kind in "USO" else jax.device_put(v) for k, v in batch.items()}


def close(iterator: Iterator) -> None:
  """Stops a grain iterator's reader threads (a no-op for other iterators)."""
  stop = getattr(iterator, "close", None)
  if stop is not None:
    stop()
