"""Orbax checkpoints of a run: the last N epochs (to resume), the best one (by validation) and,
with `impl.checkpoint_every_steps`, the newest mid-epoch one (to resume exactly where it stopped).

Every saved step gets a manifest (size and SHA-256 of each of its files, in
`checkpoints/manifests/<kind>-<step>.json`), so a truncated or altered file is found before orbax
reads it, and named.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import shutil
from typing import Any, Callable, Optional

import jax
import orbax.checkpoint as ocp

from smml_jax.train import distributed

KINDS = ("latest", "best")  # saved at epoch ends, numbered by epoch
PARTIAL = "partial"  # saved within an epoch, numbered by train step; superseded at the epoch end
MANIFEST_DIR = "manifests"
QUARANTINE_DIR = "damaged"


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be restored (missing, truncated or altered files)."""


def _sha256(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with path.open("rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def step_files(step_dir: pathlib.Path) -> dict[str, dict[str, Any]]:
  """{relative path: {'size', 'sha256'}} of every file under one checkpoint step folder."""
  return {
    str(p.relative_to(step_dir)): {"size": p.stat().st_size, "sha256": _sha256(p)}
    for p in sorted(step_dir.rglob("*"))
    if p.is_file()
  }


def verify_step(step_dir: pathlib.Path, manifest: pathlib.Path, what: str) -> None:
  """Raises CheckpointError naming `what` and the first missing, truncated or altered file.

  A step without a manifest (written before manifests existed) is left to orbax's own checks.
  """
  if not step_dir.is_dir():
    raise CheckpointError(f"{what}: folder {step_dir} does not exist")
  if not manifest.is_file():
    return
  try:
    expected = json.loads(manifest.read_text())
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{what}: its manifest {manifest} is not valid JSON ({e})") from e
  for rel, want in expected.items():
    path = step_dir / rel
    if not path.is_file():
      raise CheckpointError(f"{what}: file {path} is missing")
    size = path.stat().st_size
    if size != want["size"]:
      raise CheckpointError(f"{what}: file {path} is truncated or altered ({size} bytes, {want['size']} when saved)")
    if _sha256(path) != want["sha256"]:
      raise CheckpointError(f"{what}: file {path} is corrupted (its SHA-256 differs from when it was saved)")


def describe(kind: str, step: int) -> str:
  """How messages name a checkpoint: epoch checkpoints are numbered by their 0-based epoch, partial
  (mid-epoch) ones by their train step."""
  if kind == PARTIAL:
    return f"checkpoint {kind}/{step} (saved after train step {step}, within an epoch)"
  return f"checkpoint {kind}/{step} (saved after epoch {step})"


def restore_params(directory: str | pathlib.Path, kind: str, params_template: Any) -> tuple[Any, dict]:
  """Only the params of the newest `kind` checkpoint under `directory` (no optimiser state).

  For inference: opens the `RunCheckpoints` layout read-only, verifies the step against its
  manifest and restores `state['params']` onto this process's first device.

  Args:
    directory: a run's `checkpoints/` folder.
    kind: 'best' or 'latest'.
    params_template: params pytree or its abstract shapes (ShapeDtypeStructs).

  Returns:
    (params as jax arrays, the checkpoint's JSON meta). CheckpointError names what is wrong.
  """
  if kind not in KINDS:
    raise CheckpointError(f"checkpoint must be one of {KINDS}, got {kind!r}")
  directory = pathlib.Path(directory).resolve()
  folder = directory / kind
  if not folder.is_dir():
    raise CheckpointError(f"no {kind!r} checkpoint under {directory} (expected {folder})")
  with ocp.CheckpointManager(folder, options=ocp.CheckpointManagerOptions(create=False)) as manager:
    step = manager.latest_step()
    if step is None:
      raise CheckpointError(f"{folder} holds no checkpoint step")
    what = describe(kind, step)
    verify_step(folder / str(step), directory / MANIFEST_DIR / f"{kind}-{step}.json", what)
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), params_template)
    restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=sharding), abstract)
    try:
      restored = manager.restore(
        step,
        args=ocp.args.Composite(
          state=ocp.args.PyTreeRestore(
            item={"params": abstract}, restore_args={"params": restore_args}, partial_restore=True
          ),
          meta=ocp.args.JsonRestore(),
        ),
      )
    except Exception as e:  # orbax / tensorstore raise many types for unreadable files
      raise CheckpointError(f"{what} in {folder / str(step)} cannot be read: {type(e).__name__}: {e}") from e
  return restored["state"]["params"], dict(restored["meta"])


class RunCheckpoints:
  """`latest/` (the last `keep` epochs), `best/` and `partial/` CheckpointManagers of one run.

  Each checkpoint holds the TrainState (params, optimiser state, step, dropout RNG), a JSON `meta`
  item (epoch, history, best so far, resolved config) and, when given, a JSON `data` item: where
  the input pipeline stands (the epoch and the grain iterator's state within it), so a resumed
  run reads the very batches the interrupted one would have. `latest`/`best` steps are epochs
  (0-based); `partial` steps are train steps, and only the newest is kept. Saving and restoring
  are collective: every process of a multi-process run calls them.
  """

  def __init__(self, directory: str | pathlib.Path, keep: int = 2):
    if keep < 1:
      raise ValueError(f"keep: at least 1 latest checkpoint is kept, got {keep}")
    self.directory = pathlib.Path(directory).resolve()
    self.managers = {}
    for kind, n in (("latest", keep), ("best", 1), (PARTIAL, 1)):
      options = ocp.CheckpointManagerOptions(max_to_keep=n, create=True, enable_async_checkpointing=False)
      self.managers[kind] = ocp.CheckpointManager(self.directory / kind, options=options)

  def step_dir(self, kind: str, step: int) -> pathlib.Path:
    return self.directory / kind / str(step)

  def manifest(self, kind: str, step: int) -> pathlib.Path:
    return self.directory / MANIFEST_DIR / f"{kind}-{step}.json"

  def _save(self, kind: str, step: int, state: Any, meta: dict, data: Optional[dict] = None) -> None:
    manager = self.managers[kind]
    items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    if data is not None:
      items["data"] = ocp.args.JsonSave(data)
    manager.save(step, args=ocp.args.Composite(**items), force=True)
    manager.wait_until_finished()
    if jax.process_index() == 0:
      (self.directory / MANIFEST_DIR).mkdir(exist_ok=True)
      tmp = self.manifest(kind, step).with_suffix(".tmp")
      tmp.write_text(json.dumps(step_files(self.step_dir(kind, step))))
      tmp.replace(self.manifest(kind, step))
      kept = {f"{kind}-{s}.json" for s in manager.all_steps()}
      for old in (self.directory / MANIFEST_DIR).glob(f"{kind}-*.json"):
        if old.name not in kept:
          old.unlink()

  def save_latest(self, epoch: int, state: Any, meta: dict, data: Optional[dict] = None) -> None:
    self._save("latest", epoch, state, meta, data)
    self._drop_partial()  # the epoch's end supersedes its mid-epoch checkpoint

  def save_best(self, epoch: int, state: Any, meta: dict, data: Optional[dict] = None) -> None:
    self._save("best", epoch, state, meta, data)

  def save_partial(self, step: int, state: Any, meta: dict, data: dict) -> None:
    """A mid-epoch checkpoint after train step `step` (1-based), with the pipeline's position."""
    self._save(PARTIAL, step, state, meta, data)

  def _drop_partial(self) -> None:
    manager = self.managers[PARTIAL]
    for step in manager.all_steps():
      manager.delete(step)
      if jax.process_index() == 0:
        self.manifest(PARTIAL, step).unlink(missing_ok=True)

  def steps(self, kind: str) -> list[int]:
    return sorted(self.managers[kind].all_steps())

  def restore(self, kind: str, step: int, template: Any) -> tuple[Any, dict]:
    """(state, meta) of one checkpoint; CheckpointError naming the step and the damaged file.

    A checkpoint saved with a `data` item returns it as meta['data'].
    """
    what = describe(kind, step)
    verify_step(self.step_dir(kind, step), self.manifest(kind, step), what)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    items = dict(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
    if (self.step_dir(kind, step) / "data").is_dir():  # checkpoints before the item have none
      items["data"] = ocp.args.JsonRestore()
    try:
      restored = self.managers[kind].restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # orbax / tensorstore raise many types for unreadable files
      raise CheckpointError(f"{what} in {self.step_dir(kind, step)} cannot be read: {type(e).__name__}: {e}") from e
    meta = dict(restored["meta"])
    if "data" in items:
      meta["data"] = dict(restored["data"])
    return restored["state"], meta

  def restore_for_resume(self, template: Any, log: Callable[[str], None] = print) -> Optional[tuple[Any, dict]]:
    """The newest intact checkpoint (partial, then latest or best), or None when there is none.

    A partial checkpoint is newer than every epoch-end one (those delete it when saved). Damaged
    checkpoints are reported and skipped. Checkpoints newer than the one restored are moved to
    `checkpoints/damaged/` (their steps are trained again, identically), so the managers never
    hold steps ahead of the run.
    """
    candidates = [(s, PARTIAL) for s in reversed(self.steps(PARTIAL))]
    candidates += sorted(((s, k) for k in KINDS for s in self.steps(k)), reverse=True)
    for step, kind in candidates:
      try:
        state, meta = self.restore(kind, step, template)
      except CheckpointError as e:
        log(f"warning: {e}; falling back to an older checkpoint")
        continue
      if kind == PARTIAL:
        self._set_aside(lambda k, s, step=step: k == PARTIAL and s > step)
      else:
        self._set_aside(lambda k, s, step=step: k == PARTIAL or s > step)
      return state, meta
    if candidates:
      self._set_aside(lambda k, s: True)
      log("warning: no intact checkpoint is left; the run starts again from epoch 1")
    return None

  def _set_aside(self, which: Callable[[str, int], bool]) -> None:
    if jax.process_index() == 0:
      for kind in (*KINDS, PARTIAL):
        for step in [s for s in self.steps(kind) if which(kind, s)]:
          target = self.directory / QUARANTINE_DIR / f"{kind}-{step}"
          if target.exists():
            shutil.rmtree(target)
          target.parent.mkdir(exist_ok=True)
          self.step_dir(kind, step).rename(target)
          self.manifest(kind, step).unlink(missing_ok=True)
    distributed.barrier("checkpoints:set_aside")
    for manager in self.managers.values():
      manager.reload()

  def newest(self) -> Optional[str]:
    """'latest/<step>' of the newest saved checkpoint (for messages), or None."""
    steps = self.steps("latest")
    return f"{self.directory / 'latest' / str(steps[-1])} (after epoch {steps[-1]})" if steps else None

  def close(self) -> None:
    for manager in self.managers.values():
      manager.close()
