"""Interpretability primitives on arrays: integrated gradients, deformable sampling points, attention mass.

Nothing here depends on the training code. The functions take what a model returns
(`ModelOutput.grid_*`, `ModelOutput.attn_*`) or a callable producing logits, and return
arrays / DataFrames that `smml_jax.evaluate.figures` draws.

Geometry conventions (see the reference README, DeformCrossAttention2D steps 4-6):
  * a deformable grid is (B * G, 2, S, S), un-normalised in offset-grid cell units, row b * G + g,
    channel 0 = x (column), channel 1 = y (row); its S * S points flatten row-major (key j = S*oy + ox),
    the same order as the M axis of the attention probabilities;
  * it samples the n x n patch grid with align_corners=False, so the pixel position is
    px = grid * n / (S - 1) - 0.5, and a bilinear corner outside [0, n-1]^2 contributes zero.
"""

from __future__ import annotations

import functools
from typing import Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from smml_jax.tasks import Task

Array = jax.Array
Inputs = Mapping[str, Array]


# ----------------------------------------------------------------------------- integrated gradients


def class_target(classes: Array, probability: bool = False) -> Callable[[Array], Array]:
  """A `target_fn` that picks a fixed class per example: logits (B, K) -> (B,).

  Fix the class at the real input (e.g. `classes = logits.argmax(-1)`) rather than taking the argmax
  inside the target: the argmax would change along the integration path and break completeness.

  Args:
    classes: (B,) int class index per example.
    probability: select the softmax probability instead of the logit.
  """
  classes = jnp.asarray(classes)

  def target(logits: Array) -> Array:
    values = jax.nn.softmax(logits, axis=-1) if probability else logits
    return jnp.take_along_axis(values, classes[:, None].astype(jnp.int32), axis=-1)[:, 0]

  return target


def integrated_gradients(
  fn: Callable[[Inputs], Array],
  inputs: Inputs,
  baselines: Optional[Inputs],
  target_fn: Callable[[Array], Array],
  steps: int = 32,
  alpha_batch_size: Optional[int] = None,
) -> dict[str, Array]:
  """Integrated gradients of a per-example scalar w.r.t. every array of `inputs`.

  attribution_i = (x_i - x'_i) * integral_0^1 d target(fn(x' + a (x - x'))) / d x_i da, with the
  integral approximated by the trapezoid rule over `steps` + 1 equally spaced alphas (so the error
  of the completeness axiom sum_i attribution_i = f(x) - f(x') falls as 1 / steps^2 for smooth f).

  Examples must be independent in `fn` (no batch statistics), so the gradient of the batch sum is the
  per-example gradient. Everything fn needs besides `inputs` (params, patches) is closed over.
  jit-friendly: `steps` and `alpha_batch_size` are static Python ints.

  Args:
    fn: inputs -> (B, K) logits (or any (B, ...) output that `target_fn` reduces).
    inputs: name -> (B, ...) float arrays, e.g. {'genes_tumour': (B, Gt), 'genes_micro': (B, Gm)}.
    baselines: same keys and shapes (or broadcastable, e.g. a (G,) training mean); zeros when None.
    target_fn: (B, K) -> (B,) the scalar explained per example (see `class_target`, `Task.attribution_target`).
    steps: number of trapezoid intervals (>= 1).
    alpha_batch_size: evaluate this many alphas at once (memory bound); None = all at once (vmap).

  Returns:
    name -> attributions with the shape of `inputs[name]`.
  """
  if steps < 1:
    raise ValueError(f"integrated_gradients: steps must be >= 1, got {steps}")
  if not inputs:
    raise ValueError("integrated_gradients: `inputs` is empty; pass at least one array to attribute")
  inputs = {k: jnp.asarray(v) for k, v in inputs.items()}
  if baselines is None:
    baselines = {k: jnp.zeros_like(v) for k, v in inputs.items()}
  else:
    missing = sorted(set(inputs) - set(baselines))
    if missing:
      raise ValueError(f"integrated_gradients: baselines lack the input(s) {missing}")
    baselines = {k: jnp.broadcast_to(jnp.asarray(baselines[k], inputs[k].dtype), inputs[k].shape) for k in inputs}
  deltas = {k: inputs[k] - baselines[k] for k in inputs}

  def batch_target_sum(x: dict[str, Array]) -> Array:
    target = target_fn(fn(x))
    if target.ndim != 1:
      raise ValueError(f"integrated_gradients: target_fn must return (B,), got shape {target.shape}")
    return jnp.sum(target)

  grad_fn = jax.grad(batch_target_sum)

  def grad_at(alpha: Array) -> dict[str, Array]:
    return grad_fn({k: baselines[k] + alpha * deltas[k] for k in inputs})

  @jax.jit  # one compiled program instead of op-by-op dispatch (a no-op under an outer jit)
  def path_integral() -> dict[str, Array]:
    alphas = jnp.linspace(0.0, 1.0, steps + 1)
    weights = jnp.full((steps + 1,), 1.0 / steps).at[0].mul(0.5).at[-1].mul(0.5)
    if alpha_batch_size is None:
      grads = jax.vmap(grad_at)(alphas)
    else:
      grads = jax.lax.map(grad_at, alphas, batch_size=alpha_batch_size)
    return {k: deltas[k] * jnp.tensordot(weights.astype(grads[k].dtype), grads[k], axes=1) for k in inputs}

  return path_integral()


GENE_INPUTS = ("genes_tumour", "genes_micro")


def model_gene_attributions(
  apply_fn: Callable[..., object],
  variables: Mapping[str, object],
  batch: Mapping[str, Array],
  task: Task,
  baselines: Optional[Inputs] = None,
  steps: int = 32,
  alpha_batch_size: Optional[int] = None,
) -> dict[str, Array]:
  """Integrated gradients of a project model w.r.t. both gene inputs, everything else held fixed.

  The explained scalar is the task's `attribution_target`: the softmax probability of the class the
  model predicts at the real input (fixed along the path), or the survival risk.

  Args:
    apply_fn: `model.apply`, called as apply_fn(variables, batch, train=False) -> ModelOutput (or logits).
    variables: {'params': ...} (and any other collections).
    batch: the model's input batch ('patches', 'genes_tumour', 'genes_micro', optional 'coords').
    task: what the logits mean (`smml_jax.tasks`).
    baselines: {'genes_tumour': ..., 'genes_micro': ...} (e.g. training means); zeros when None.

  Returns:
    {'genes_tumour': (B, Gt), 'genes_micro': (B, Gm)} attributions.
  """
  missing = [k for k in GENE_INPUTS if k not in batch]
  if missing:
    raise ValueError(f"model_gene_attributions: batch lacks {missing}")

  def fn(genes: Inputs) -> Array:
    out = apply_fn(variables, {**batch, **genes}, train=False)
    return getattr(out, "logits", out)

  genes = {k: jnp.asarray(batch[k]) for k in GENE_INPUTS}
  return integrated_gradients(
    fn, genes, baselines, task.attribution_target(fn(genes)), steps=steps, alpha_batch_size=alpha_batch_size
  )


# ----------------------------------------------------------------------------- sampling geometry


def grid_points_to_pixels(grid: Array, grid_side: int, offset_side: int, groups: int) -> Array:
  """Deformable sampling grids -> (row, col) pixel positions on the n x n patch grid.

  Args:
    grid: (B * G, 2, S, S) un-normalised grid (`ModelOutput.grid_tumour` / `grid_micro`), rows b*G+g,
      channel 0 = x/column, 1 = y/row, in offset-grid cell units.
    grid_side: n, the side of the patch grid that is sampled (50 in the paper).
    offset_side: S, the side of the offset grid (12 in the paper).
    groups: G, offset groups (8 in the paper).

  Returns:
    (B, G, S * S, 2) float (row, col) pixel positions, px = grid * n / (S - 1) - 0.5; points flatten
    row-major over (oy, ox), matching the key axis M of the attention probabilities.
  """
  grid = jnp.asarray(grid)
  if grid.ndim != 4 or grid.shape[1] != 2 or grid.shape[2:] != (offset_side, offset_side):
    raise ValueError(
      f"grid_points_to_pixels: expected a (B*G, 2, {offset_side}, {offset_side}) grid, got shape {grid.shape}"
    )
  if offset_side < 2:
    raise ValueError(f"grid_points_to_pixels: offset_side must be >= 2, got {offset_side}")
  if grid.shape[0] % groups:
    raise ValueError(f"grid_points_to_pixels: grid has {grid.shape[0]} rows, not a multiple of groups={groups}")
  pixels = grid * (grid_side / (offset_side - 1)) - 0.5
  batch = grid.shape[0] // groups
  pixels = pixels.reshape(batch, groups, 2, offset_side * offset_side)
  col, row = pixels[:, :, 0], pixels[:, :, 1]
  return jnp.stack([row, col], axis=-1)


@functools.partial(jax.jit, static_argnums=2)
def bilinear_splat(points: Array, weights: Array, grid_side: int) -> Array:
  """Scatter per-point weights onto an n x n grid with bilinear weights, zero outside per corner.

  The adjoint of the model's bilinear sampling: a point's four corners floor/floor+1 in row and col
  receive weight * (1 - |r - ri|) * (1 - |c - ci|); a corner outside [0, n-1]^2 receives nothing.

  Args:
    points: (B, P, 2) or (B, G, P, 2) (row, col) pixel positions.
    weights: points.shape[:-1] per-point weights.
    grid_side: n.

  Returns:
    (B, n * n) row-major splatted weights (summed over groups).
  """
  points = jnp.asarray(points, jnp.float32)
  weights = jnp.asarray(weights, jnp.float32)
  if points.shape[-1] != 2 or weights.shape != points.shape[:-1]:
    raise ValueError(
      f"bilinear_splat: expected points (..., P, 2) and weights (..., P), got {points.shape} and {weights.shape}"
    )
  batch = points.shape[0]
  points = points.reshape(batch, -1, 2)
  weights = weights.reshape(batch, -1)
  r, c = points[..., 0], points[..., 1]
  r0, c0 = jnp.floor(r), jnp.floor(c)
  out = jnp.zeros((batch, grid_side * grid_side), jnp.float32)
  b_idx = jnp.broadcast_to(jnp.arange(batch)[:, None], r.shape)
  for dr in (0.0, 1.0):
    for dc in (0.0, 1.0):
      ri, ci = r0 + dr, c0 + dc
      w = (1.0 - jnp.abs(r - ri)) * (1.0 - jnp.abs(c - ci))
      inside = (ri >= 0) & (ri <= grid_side - 1) & (ci >= 0) & (ci <= grid_side - 1)
      flat = (jnp.clip(ri, 0, grid_side - 1) * grid_side + jnp.clip(ci, 0, grid_side - 1)).astype(jnp.int32)
      out = out.at[b_idx, flat].add(jnp.where(inside, w * weights, 0.0))
  return out


def attention_mass(attn: Array) -> Array:
  """Attention probabilities (B, G, Nq, M) -> (B, G, M) mass each sampled point receives (sum over queries)."""
  attn = jnp.asarray(attn)
  if attn.ndim != 4:
    raise ValueError(f"attention_mass: expected (B, G, Nq, M) attention probabilities, got {attn.shape}")
  return jnp.sum(attn, axis=2)


def patch_mass(points: Array, mass: Array, grid_side: int) -> Array:
  """Per-point attention mass (B, G, P) at (B, G, P, 2) pixel positions -> (B, n, n) mass per patch.

  Each point's mass is shared among the patches it actually sampled, with the bilinear weights of the
  sampling step (mass landing on padding outside the grid is dropped).
  """
  batch = jnp.asarray(points).shape[0]
  return bilinear_splat(points, mass, grid_side).reshape(batch, grid_side, grid_side)


class UndefinedRatio(ValueError):
  """A concentration whose denominator (chance level) is zero: not available, not an error."""


def lattice_grid(rows: int, offset_side: int) -> np.ndarray:
  """The undeformed sampling lattice (all offsets zero) in the layout of `ModelOutput.grid_*`.

  Returns:
    (rows, 2, S, S) float32: channel 0 = x (column index ox), channel 1 = y (row index oy), the
    base grid the deformable attention adds its offsets to.
  """
  oy, ox = np.meshgrid(np.arange(offset_side), np.arange(offset_side), indexing="ij")
  return np.broadcast_to(np.stack([ox, oy]).astype(np.float32), (rows, 2, offset_side, offset_side)).copy()


def mass_concentration(mass: Array, region_mask: Array) -> float:
  """How much more of a per-patch mass lies in a region than its area predicts (chance = 1.0).

  Pooled over the batch: sum(mass in the region) / sum_b(mass of slide b * region area fraction
  of slide b), so each slide's chance level uses its own region's area.

  Args:
    mass: (B, n * n) or (B, n, n) non-negative mass per patch (sampling density, attention mass).
    region_mask: the same shape, boolean / {0, 1} region per slide, row-major.
  """
  mass = np.asarray(mass, np.float64)
  mask = np.asarray(region_mask, np.float64)
  if mass.ndim not in (2, 3) or mask.size != mass.size or mask.shape[0] != mass.shape[0]:
    raise ValueError(
      f"mass_concentration: region_mask {mask.shape} does not match the per-patch "
      f"mass {mass.shape}; expected (B, n * n) or (B, n, n) for both"
    )
  mass, mask = mass.reshape(len(mass), -1), mask.reshape(len(mask), -1)
  chance = np.sum(mass.sum(axis=1) * mask.mean(axis=1))
  if chance <= 0:
    raise UndefinedRatio(
      "mass_concentration: no mass inside the grid on any slide with a non-empty region; the ratio is undefined"
    )
  return float(np.sum(mass * mask) / chance)


def region_concentration(points: Array, region_mask: Array, grid_side: int) -> float:
  """How much more often sampling points land in a region than chance (chance = 1.0).

  Each point counts with its bilinear weights on the grid (the part outside the grid is ignored).
  Pooled over the batch: (sampling mass in the region) / (sampling mass inside the grid * region area
  fraction), both summed over slides, so each slide's chance level uses its own region's area.

  Args:
    points: (B, G, P, 2) or (B, P, 2) (row, col) pixel positions.
    region_mask: (B, n * n) or (B, n, n) boolean / {0, 1} region per slide, row-major.
    grid_side: n.
  """
  mask = np.asarray(region_mask, np.float64)
  batch = np.asarray(points).shape[0]
  if mask.shape not in ((batch, grid_side * grid_side), (batch, grid_side, grid_side)):
    raise ValueError(
      f"region_concentration: region_mask must be ({batch}, {grid_side * grid_side}) or "
      f"({batch}, {grid_side}, {grid_side}), got {mask.shape}"
    )
  density = bilinear_splat(points, jnp.ones(np.asarray(points).shape[:-1]), grid_side)
  try:
    return mass_concentration(density, mask.reshape(batch, -1))
  except UndefinedRatio:
    raise UndefinedRatio(
      "region_concentration: no sampling mass inside the grid on any slide "
      "with a non-empty region; the ratio is undefined"
    ) from None


# ----------------------------------------------------------------------------- gene ranking


def top_genes(attributions: Array, gene_names: Sequence[str], k: Optional[int] = None) -> pd.DataFrame:
  """Rank genes by mean |attribution| over examples.

  Args:
    attributions: (B, G) per-example gene attributions (from `integrated_gradients`).
    gene_names: G names, in input order.
    k: keep the top k rows; None keeps every gene (for the CSV of all genes).

  Returns:
    DataFrame with columns gene, mean_abs_attribution, mean_attribution, std_abs_attribution (sample
    std across examples: the spread; NaN for one example), rank (1 = most important), sorted by rank.
  """
  attributions = np.asarray(attributions, np.float64)
  if attributions.ndim != 2:
    raise ValueError(f"top_genes: expected (B, G) attributions, got shape {attributions.shape}")
  if len(gene_names) != attributions.shape[1]:
    raise ValueError(f"top_genes: {len(gene_names)} gene names for {attributions.shape[1]} attribution columns")
  frame = pd.DataFrame(
    {
      "gene": list(gene_names),
      "mean_abs_attribution": np.abs(attributions).mean(axis=0),
      "mean_attribution": attributions.mean(axis=0),
      "std_abs_attribution": (
        np.abs(attributions).std(axis=0, ddof=1) if len(attributions) > 1 else np.full(attributions.shape[1], np.nan)
      ),
    }
  )
  frame = frame.sort_values("mean_abs_attribution", ascending=False, kind="stable").reset_index(drop=True)
  frame["rank"] = np.arange(1, len(frame) + 1)
  return frame if k is None else frame.head(k)
