"""The one epoch loop: every trainer (the slide run, the in-memory genomic study) steps through it.

Epochs are numbered from 0 everywhere: `best_epoch` in summary.json and in the genomic study's
run.json, `metrics.jsonl`'s `epoch`, and the console's `epoch 2 (3/5)` (epoch 2, the third of 5).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Mapping

from smml_jax.train.state import TrainState

Batch = Mapping[str, Any]
TrainStep = Callable[[TrainState, Batch], tuple[TrainState, dict[str, Any]]]


class TrainingDiverged(RuntimeError):
  """A non-finite loss or gradient: the run cannot train further."""


def epoch_steps(
  train_step: TrainStep, state: TrainState, batches: Iterable[Batch]
) -> Iterator[tuple[TrainState, dict[str, Any]]]:
  """One pass over `batches`: yields (state after the step, the step's metrics) per batch.

  `train_step` is `steps.make_train_step(...)` (it donates the state it is given, so keep only
  the state yielded last). The caller checks `metrics['finite']` when it can afford a host sync.
  """
  for batch in batches:
    state, metrics = train_step(state, batch)
    yield state, metrics


def epoch_label(epoch: int, epochs: int) -> str:
  """'epoch 2 (3/5)': the 0-based epoch, then how far through the run it is."""
  return f"epoch {epoch} ({epoch + 1}/{epochs})"
