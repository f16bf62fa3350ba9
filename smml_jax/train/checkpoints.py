"""Orbax checkpoints of a run: the latest epoch (to resume) and the best one (by validation)."""

from __future__ import annotations

import pathlib
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp


class RunCheckpoints:
  """`latest/` and `best/` CheckpointManagers under one run directory.

  Each checkpoint holds the TrainState (params, optimiser state, step, dropout RNG) and a JSON
  `meta` item (epoch, history, best so far, resolved config). The data order needs no RNG
  state: it is a function of (seed, epoch). Saving and restoring are collective: every process
  of a multi-process run calls them.
  """

  def __init__(self, directory: str | pathlib.Path):
    directory = pathlib.Path(directory).resolve()
    options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True,
                                           enable_async_checkpointing=False)
    self.latest = ocp.CheckpointManager(directory / "latest", options=options)
    self.best = ocp.CheckpointManager(directory / "best", options=options)

  @staticmethod
  def _save(manager: ocp.CheckpointManager, step: int, state: Any, meta: dict) -> None:
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               meta=ocp.args.JsonSave(meta)), force=True)
    manager.wait_until_finished()

  def save_latest(self, epoch: int, state: Any, meta: dict) -> None:
    self._save(self.latest, epoch, state, meta)

  def save_best(self, epoch: int, state: Any, meta: dict) -> None:
    self._save(self.best, epoch, state, meta)

  @staticmethod
  def _restore(manager: ocp.CheckpointManager, template: Any,
               step: Optional[int] = None) -> Optional[tuple[Any, dict]]:
    step = manager.latest_step() if step is None else step
    if step is None:
      return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return restored["state"], dict(restored["meta"])

  def restore_latest(self, template: Any) -> Optional[tuple[Any, dict]]:
    return self._restore(self.latest, template)

  def restore_best(self, template: Any) -> Optional[tuple[Any, dict]]:
    return self._restore(self.best, template)

  def close(self) -> None:
    self.latest.close()
    self.best.close()
