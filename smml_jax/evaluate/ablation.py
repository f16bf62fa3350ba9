"""Does a prediction use the sampling points a report shows? Ablations of the deformable attention.

A sampling-point figure says what a branch looked at only if the prediction depends on where it
looked. These parameter edits switch one part of one branch's attention off, so the same slides
can be scored again:

  'offsets_zero'   offset_proj kernel = 0: every offset is exactly 0 and the branch samples the
                   undeformed lattice (its learned placement, content-driven or fixed, is gone);
  'attention_off'  to_out kernel and bias = 0: the attention adds nothing to the fused tokens,
                   and the branch keeps only its residual path (the mean of its fused tokens).

`offset_statistics` separates content-driven placement from one fixed learned shift: how much
each offset varies from slide to slide, against how large it is.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd
from flax import traverse_util

from smml_jax.data.normalise import SUBSPACES as BRANCHES

ABLATIONS = {"offsets_zero": (("offset_proj", "kernel"),), "attention_off": (("to_out", "kernel"), ("to_out", "bias"))}


def supports(params: Mapping[str, Any]) -> bool:
  """Whether `params` has the two deformable-attention branches these ablations edit."""
  flat = traverse_util.flatten_dict(params)
  return all(
    (f"branch_{s}", "attention") + leaf in flat for s in BRANCHES for leaves in ABLATIONS.values() for leaf in leaves
  )


def ablated_params(params: Mapping[str, Any], branch: str, ablation: str) -> dict[str, Any]:
  """A copy of a SubspaceNet's `params` with one part of one branch's attention zeroed.

  Args:
    params: the model's params tree (`{'branch_tumour': {'attention': ...}, ...}`).
    branch: 'tumour' or 'micro'.
    ablation: a key of ABLATIONS.

  Raises:
    ValueError: naming what is missing, for an unknown branch/ablation or a model without it.
  """
  if branch not in BRANCHES:
    raise ValueError(f"ablated_params: branch must be one of {BRANCHES}, got {branch!r}")
  if ablation not in ABLATIONS:
    raise ValueError(f"ablated_params: ablation must be one of {tuple(ABLATIONS)}, got {ablation!r}")
  flat = dict(traverse_util.flatten_dict(params))
  for leaf in ABLATIONS[ablation]:
    path = (f"branch_{branch}", "attention") + leaf
    if path not in flat:
      raise ValueError(
        f"ablated_params: the params have no {'/'.join(path)}; the ablations need "
        "a subspace model with 2D deformable attention"
      )
    flat[path] = np.zeros_like(np.asarray(flat[path]))
  return traverse_util.unflatten_dict(flat)


def offset_statistics(grid: np.ndarray, grid_side: int) -> dict[str, float]:
  """How far one branch's offsets move the points, and how much of that depends on the slide.

  Args:
    grid: (n, G, 2, S, S) un-normalised sampling grids of n slides (`inference.run_model`'s
      `grid_<s>`), in offset-lattice cells.
    grid_side: the side of the patch grid, to express offsets in patches.

  Returns:
    'mean_abs_offset': mean |offset| over slides, groups, points and both axes, in patches;
    'between_slide_std': the std over slides of each offset, averaged over groups, points and
      axes, in patches (0 = the same placement on every slide: content-blind);
    'content_fraction': between_slide_std / root-mean-square offset (0 = one fixed shift).
  """
  grid = np.asarray(grid, np.float64)
  if grid.ndim != 5 or grid.shape[2] != 2 or grid.shape[3] != grid.shape[4] or grid.shape[3] < 2:
    raise ValueError(f"offset_statistics: expected (n, G, 2, S, S) grids, got {grid.shape}")
  side = grid.shape[-1]
  oy, ox = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
  offsets = (grid - np.stack([ox, oy])) * (grid_side / (side - 1))
  rms = float(np.sqrt(np.mean(offsets**2)))
  spread = float(offsets.std(axis=0).mean()) if len(offsets) > 1 else float("nan")
  return {
    "mean_abs_offset": float(np.abs(offsets).mean()),
    "between_slide_std": spread,
    "content_fraction": spread / rms if rms > 0 else float("nan"),
  }


def ablation_metrics(run, batches, trained_table: pd.DataFrame) -> dict[str, Any]:
  """The run's headline metric on the same slides with each ablation of each branch.

  Args:
    run: an `inference.TrainedRun` of a subspace model (`supports(run.params)`).
    batches: a callable returning a fresh iterable of the slides' preprocessed batches.
    trained_table: `inference.prediction_table` of the unablated run on those slides.

  Returns:
    {'metric': 'auc' | 'c_index', 'trained': value,
     '<branch>_<ablation>': value, '<branch>_<ablation>_change': value - trained, ...}.
  """
  from smml_jax.evaluate import inference

  task = run.task_spec
  name, trained = task.headline(trained_table)
  result: dict[str, Any] = {"metric": name, "trained": trained}
  for branch in BRANCHES:
    for ablation in ABLATIONS:
      params = ablated_params(run.params, branch, ablation)
      outputs = inference.run_model(run, batches(), params=params)
      _, value = task.headline(inference.prediction_table(run, outputs))
      result[f"{branch}_{ablation}"] = value
      result[f"{branch}_{ablation}_change"] = value - trained
  return result
