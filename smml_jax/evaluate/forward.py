"""Forward passes of a trained run in eval mode over batches, padding removed."""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from smml_jax.data.features import INT_LABELS
from smml_jax.evaluate.errors import InferenceError
from smml_jax.evaluate.trained_run import TrainedRun
from smml_jax.models.outputs import ModelOutput

Batch = dict[str, np.ndarray]
MODEL_INPUTS = ("patches", "genes_tumour", "genes_micro")
# Read by a run trained with missing expression (its params hold the learned absent embeddings).
PRESENCE = "has_expression"


def forward_fn(run: TrainedRun) -> Callable[[Any, Mapping[str, jax.Array]], ModelOutput]:
  """jit-compiled (params, batch) -> ModelOutput in eval mode (one per model, reused)."""
  return _forward(run.spec.module)


@functools.lru_cache(maxsize=8)
def _forward(module) -> Callable[[Any, Mapping[str, jax.Array]], ModelOutput]:
  return jax.jit(lambda params, batch: module.apply({"params": params}, batch, train=False))


OUTPUT_FIELDS = ("logits", "grid_tumour", "grid_micro", "attn_tumour", "attn_micro")
CARRIED_FIELDS = (
  "slide_id",
  "patient_id",
  "coords",
  "tissue_mask",
  "immune_mask",
  "tumour_mask",
  "surv_time",
  PRESENCE,
) + INT_LABELS


def run_model(
  run: TrainedRun, batches: Iterable[Batch], fields: Sequence[str] = ("logits",), params: Any = None
) -> dict[str, np.ndarray]:
  """Model outputs over batches, padding removed, plus the batches' ids, labels and masks.

  Args:
    fields: ModelOutput fields to keep (e.g. OUTPUT_FIELDS); per-example fields are (B, ...);
      a grid (B * G, ...) is returned as (B, G, ...).
    params: the params to run (default: the run's own; e.g. an `ablation.ablated_params` copy).

  Returns:
    field -> (n, ...) arrays over the real (unpadded) examples, in batch order, with
    `patch_norm` (n, N) = the L2 norm of each patch feature (a neutral background for figures).
  """
  forward = forward_fn(run)
  params = run.params if params is None else params
  inputs = MODEL_INPUTS + ((PRESENCE,) if any(str(k).startswith("absent_") for k in params) else ())
  chunks: dict[str, list[np.ndarray]] = {}
  for batch in batches:
    mask = np.asarray(batch["mask"], bool)
    out = forward(params, {k: jnp.asarray(batch[k]) for k in inputs if k in batch})
    b = mask.shape[0]
    for name in fields:
      value = getattr(out, name)
      if value is None:
        continue
      value = np.asarray(value, np.float32)
      if value.shape[0] != b:  # (B * G, ...) grids
        value = value.reshape(b, value.shape[0] // b, *value.shape[1:])
      chunks.setdefault(name, []).append(value[mask])
    for name in CARRIED_FIELDS:
      if name in batch:
        chunks.setdefault(name, []).append(np.asarray(batch[name])[mask])
    norm = np.linalg.norm(np.asarray(batch["patches"], np.float32), axis=-1)
    chunks.setdefault("patch_norm", []).append(norm[mask])
  if not chunks:
    raise InferenceError("no slide to predict")
  return {k: np.concatenate(v) for k, v in chunks.items()}
