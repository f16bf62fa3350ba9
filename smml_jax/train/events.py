"""What a run reports while it trains: TensorBoard event files and a `logging` file.

TensorBoard reads `<run>/events/` (`tensorboard --logdir runs/`); the files are written with
tensorboardX, so TensorFlow is never imported. Tags: `train/<name>` per optimiser step (loss parts,
grad_norm, learning_rate, score_tumour / score_micro, coordination_edited) and `<split>/<metric>`
per evaluation. `<run>/train.log` holds every console line plus what the console leaves out.

Only the process that writes records (process 0) should enable it.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import pathlib
import struct
import time
from typing import Any, Mapping, Optional

import numpy as np

# The run directory owns the names.
from smml_jax.train.run_dir import EVENTS_DIR, LOG_FILE  # noqa: F401

# Its own logger, not propagated: the console already shows these lines (print / tqdm.write), and
# a root handler that a library installed (logging.basicConfig) would print them twice.
LOGGER = "smml_jax.run"


def _scalar(value: Any) -> Optional[float]:
  """A float for numbers and 0-d / size-1 arrays (NaN kept); None for anything else."""
  if isinstance(value, (bool, np.bool_, str, bytes)) or value is None:
    return None
  if isinstance(value, numbers.Number):
    return float(value)
  if hasattr(value, "shape") and hasattr(value, "dtype") and int(np.prod(value.shape)) == 1:
    array = np.asarray(value)
    return float(array.reshape(())) if np.issubdtype(array.dtype, np.number) else None
  return None


class RunEvents:
  """The run directory's event and log files; a no-op writer when `enabled` is False.

  Args:
    out_dir: the run directory.
    enabled: False on processes that do not write records.
    purge_step: on resume, the first step trained again: TensorBoard (and `read_scalars`) drop
      what earlier files hold from this step on, so a resumed run shows one curve.
  """

  def __init__(self, out_dir: str | pathlib.Path, *, enabled: bool = True, purge_step: Optional[int] = None):
    self.enabled = enabled
    self._writer = None
    self._handler: Optional[logging.Handler] = None
    self._logger = logging.getLogger(LOGGER)
    if not enabled:
      return
    from tensorboardX import SummaryWriter  # imports protobuf only

    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # tensorboardX names files by the second; a suffix keeps two writers in one second apart.
    self._writer = SummaryWriter(
      str(out_dir / EVENTS_DIR),
      purge_step=purge_step,
      flush_secs=10,
      filename_suffix=f".{os.getpid()}.{time.time_ns()}",
    )
    for stale in list(self._logger.handlers):  # a run that raised before close(): one run at a time
      self._logger.removeHandler(stale)
      stale.close()
    self._handler = logging.FileHandler(out_dir / LOG_FILE, encoding="utf-8")
    self._handler.setLevel(logging.INFO)
    self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    self._logger.addHandler(self._handler)
    self._logger.propagate = False
    self._logger.setLevel(logging.INFO)

  def _scalars(self, prefix: str, step: int, values: Mapping[str, Any]) -> None:
    if self._writer is None:
      return
    for name, value in values.items():
      number = _scalar(value)
      if number is not None:
        self._writer.add_scalar(f"{prefix}/{name}", number, int(step))

  def train_step(self, step: int, metrics: Mapping[str, Any]) -> None:
    """One optimiser step's metrics (host values) as `train/<name>` at `step`."""
    self._scalars("train", step, metrics)

  def evaluation(self, step: int, split: str, metrics: Mapping[str, Any]) -> None:
    """One split's evaluation metrics as `<split>/<metric>`; lists and dicts are skipped."""
    self._scalars(split, step, metrics)

  def info(self, message: str) -> None:
    """A line for train.log only."""
    if self.enabled:
      self._logger.info(message)

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None
    if self._handler is not None:
      self._logger.removeHandler(self._handler)
      self._handler.close()
      self._handler = None


def _records(path: pathlib.Path):
  """The payloads of a TFRecord file (length, masked CRC, payload, masked CRC)."""
  data = path.read_bytes()
  offset = 0
  while offset < len(data):
    if offset + 12 > len(data):
      raise ValueError(f"event file {path}: truncated record header at byte {offset}")
    (length,) = struct.unpack("<Q", data[offset : offset + 8])
    start = offset + 12
    if start + length + 4 > len(data):
      raise ValueError(
        f"event file {path}: record at byte {offset} claims {length} bytes, the file ends at {len(data)}"
      )
    yield data[start : start + length]
    offset = start + length + 4


def read_scalars(logdir: str | pathlib.Path) -> dict[str, list[tuple[int, float]]]:
  """Every scalar of the event files in `logdir`: {tag: [(step, value), ...]} in step order.

  Files are read in the order they were started; a file opened with a purge step (a resumed run)
  drops the values earlier files hold from that step on, as TensorBoard does.
  """
  from tensorboardX.proto import event_pb2

  logdir = pathlib.Path(logdir)
  files = sorted(logdir.glob("events.out.tfevents.*"))
  if not files:
    raise ValueError(f"read_scalars: no event file in {logdir}")
  parsed = []
  for path in files:
    file_events = []
    for payload in _records(path):
      event = event_pb2.Event()
      try:
        event.ParseFromString(payload)
      except Exception as err:  # protobuf's DecodeError
        raise ValueError(f"event file {path}: a record is not an Event ({err})") from err
      file_events.append(event)
    first = file_events[0].wall_time if file_events else math.inf
    parsed.append((first, str(path), file_events))
  scalars: dict[str, dict[int, float]] = {}
  for _, _, file_events in sorted(parsed, key=lambda item: item[:2]):
    for event in file_events:
      if event.HasField("session_log") and event.session_log.status == event.session_log.START:
        for values in scalars.values():
          for step in [s for s in values if s >= event.step]:
            del values[step]
      for value in event.summary.value:
        if value.HasField("simple_value"):
          scalars.setdefault(value.tag, {})[int(event.step)] = float(value.simple_value)
  return {tag: sorted(values.items()) for tag, values in scalars.items()}
