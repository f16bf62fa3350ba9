"""Batches of slides for the jit-compiled step.

`BatchIterator` draws a permutation of `indices` from (seed, epoch), cuts it into global batches,
gives process `process_index` its contiguous 1/process_count slice of each, reads the records with
a thread pool and keeps `prefetch` batches ready in a background thread. The last partial batch is
dropped or padded (padding repeats real examples and is flagged False in `mask`). Every batch
carries `mask` (B,) bool. `prefetch_to_device` overlaps host->device copies with compute.
"""

from __future__ import annotations

import collections
import concurrent.futures
import queue
import threading
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from smml_jax.data.features import decode_example

Batch = dict[str, np.ndarray]


def _stack(examples: Sequence[Mapping[str, np.ndarray]]) -> Batch:
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


class BatchIterator:
  """Iterable over one epoch of batches (dicts of stacked numpy arrays, strings as unicode).

  Args:
    source: random-access records (tfds data source or any sequence of dicts).
    indices: slide indices to draw from (e.g. make_splits(...)['train']).
    batch_size: GLOBAL batch size; each process gets batch_size // process_count examples.
    seed, epoch: the permutation is a function of (seed, epoch) only.
    shuffle: permute the indices (otherwise keep their order).
    drop_remainder: drop the last partial global batch instead of padding it.
    preprocess: applied to each stacked batch (e.g. a fitted Preprocessor).
    process_index, process_count: this host's place among the training processes.
    num_threads: record reader threads. prefetch: batches kept ready.
  """

  def __init__(self, source: Any, indices: Sequence[int], batch_size: int, *, seed: int = 0,
               epoch: int = 0, shuffle: bool = True, drop_remainder: bool = True,
               preprocess: Callable[[Batch], Batch] | None = None, process_index: int = 0,
               process_count: int = 1, num_threads: int = 4, prefetch: int = 2):
    if batch_size <= 0 or batch_size % process_count:
      raise ValueError(f"batch_size {batch_size} must be positive and divisible by "
                       f"process_count {process_count}")
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
      chunk = order[b * self.batch_size:(b + 1) * self.batch_size]
      mask = np.ones(self.batch_size, np.bool_)
      if len(chunk) < self.batch_size:  # pad by cycling real examples, masked out
        mask[len(chunk):] = False
        chunk = np.resize(chunk, self.batch_size)
      out.append((chunk[lo:lo + local], mask[lo:lo + local]))
    return out

  def _read(self, pool: concurrent.futures.Executor, idx: np.ndarray) -> list[Mapping]:
    getitems = getattr(self.source, "__getitems__", None)
    if getitems is not None and self.num_threads > 1 and len(idx) > 1:
      parts = np.array_split(idx, min(self.num_threads, len(idx)))
      chunks = pool.map(lambda p: getitems([int(i) for i in p]), parts)
      return [e for chunk in chunks for e in chunk]
    if getitems is not None:
      return list(getitems([int(i) for i in idx]))
    return list(pool.map(lambda i: self.source[int(i)], idx))

  def _make(self, pool, idx: np.ndarray, mask: np.ndarray) -> Batch:
    batch = _stack([decode_example(e) for e in self._read(pool, idx)])
    batch["mask"] = mask
    return self.preprocess(batch) if self.preprocess is not None else batch

  def __iter__(self) -> Iterator[Batch]:
    plan = self.plan()
    q: queue.Queue = queue.Queue(maxsize=max(1, self.prefetch))
    stop = threading.Event()
    done = object()

    def producer():
      try:
        with concurrent.futures.ThreadPoolExecutor(self.num_threads) as pool:
          for idx, mask in plan:
            if stop.is_set():
              return
            q.put(self._make(pool, idx, mask))
        q.put(done)
      except BaseException as e:  # surfaced in the consumer
        q.put(e)

    thread = threading.Thread(target=producer, daemon=True)
    thread.start()
    try:
      while True:
        item = q.get()
        if item is done:
          return
        if isinstance(item, BaseException):
          raise item
        yield item
    finally:
      stop.set()
      while thread.is_alive():  # unblock a producer waiting on a full queue
        try:
          q.get(timeout=0.05)
        except queue.Empty:
          pass
      thread.join()


def prefetch_to_device(batches: Iterator[Batch], size: int = 2, sharding: Any = None,
                       keys: Sequence[str] | None = None) -> Iterator[dict[str, Any]]:
  """Keeps `size` batches in flight on the device(s); string fields stay on the host.

  `sharding` (e.g. a jax NamedSharding over the batch axis) is passed to jax.device_put; with
  several processes, pass `jax.make_array_from_process_local_data`-ready shardings instead.
  """
  import jax  # local: the data layer does not need jax otherwise

  def put(batch: Batch) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in batch.items():
      if v.dtype.kind in "USO" or (keys is not None and k not in keys):
        out[k] = v
      elif sharding is not None:
        out[k] = jax.device_put(v, sharding)
      else:
        out[k] = jax.device_put(v)
    return out

  buf: collections.deque = collections.deque()
  for batch in batches:
    buf.append(put(batch))
    if len(buf) > size:
      yield buf.popleft()
  while buf:
    yield buf.popleft()
