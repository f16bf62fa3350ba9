"""Gradient coordination between modality subspaces, as an optax transformation.

The original (README §4) looks at the fused classifier's weight gradient, split into the
part that reads the tumour embedding and the part that reads the microenvironment
embedding, and, for every output class where the two parts conflict (cosine < 0), edits
the part of the modality that currently scores worse. This module makes that reusable:
any parameter leaf can be coordinated, split into any number M >= 2 of modality blocks.

Usage with the fused classifier of the paper's model (Flax kernel (256, K) = torch weight^T):

  tx = optax.chain(
      coordinate_gradients({'classifier/kernel': ModalitySplit.concat(sizes=(128, 128))}),
      optax.adam(1e-3))
  updates, state = tx.update(grads, state, params, modality_scores=scores, skip=skip)

The scores (M,) rank the modalities (higher = stronger); the tasks compute them
(`smml_jax.tasks.Task.modality_scores`). This module imports jax and optax only.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Literal, Mapping, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import optax

Mode = Literal["pcgrad", "reference"]


@dataclasses.dataclass(frozen=True)
class ModalitySplit:
  """How one parameter leaf splits into per-modality blocks.

  `split(leaf)` returns blocks (M, R, D): M modalities, R independent rows (coordinated
  separately), D entries per block (zero-padded where modalities differ in size: zeros
  change no dot product or norm). `merge(blocks, leaf)` writes (M, R, D) blocks back into
  an array shaped like `leaf`.
  """

  split: Callable[[jax.Array], jax.Array]
  merge: Callable[[jax.Array, jax.Array], jax.Array]

  @classmethod
  def concat(cls, sizes: Sequence[int], feature_axis: int = 0, row_axis: int = 1) -> "ModalitySplit":
    """A 2-D kernel whose `feature_axis` concatenates the modalities' inputs.

    For a Flax Dense kernel (F, K) fed concat(embed_1, ..., embed_M) (widths `sizes`), the
    defaults split the input axis 0 into M blocks and coordinate each output unit (column,
    = a row of the torch weight) independently: R = K, D = max(sizes). The same arguments give
    the same object, so jitted steps closing over it are reused.
    """
    return _concat_split(cls, tuple(int(s) for s in sizes), int(feature_axis), int(row_axis))


@functools.lru_cache(maxsize=None)
def _concat_split(cls, sizes: tuple[int, ...], feature_axis: int, row_axis: int) -> ModalitySplit:
  if len(sizes) < 2:
    raise ValueError(f"ModalitySplit.concat: need at least 2 modality sizes, got {sizes}")
  offsets = [sum(sizes[:m]) for m in range(len(sizes))]
  width = max(sizes)

  def split(leaf):
    if leaf.ndim != 2 or leaf.shape[feature_axis] != sum(sizes):
      raise ValueError(
        f"ModalitySplit.concat: expected a 2-D leaf with {sum(sizes)} entries "
        f"on axis {feature_axis}, got shape {leaf.shape}"
      )
    x = jnp.moveaxis(leaf, (row_axis, feature_axis), (0, 1))  # (R, F)
    blocks = [jnp.pad(x[:, o : o + s], ((0, 0), (0, width - s))) for o, s in zip(offsets, sizes)]
    return jnp.stack(blocks)

  def merge(blocks, leaf):
    x = jnp.concatenate([blocks[m, :, :s] for m, s in enumerate(sizes)], axis=1)
    return jnp.moveaxis(x, (0, 1), (row_axis, feature_axis)).astype(leaf.dtype)

  return cls(split, merge)


Splits = Union[Mapping[str, ModalitySplit], Callable[[str], Optional[ModalitySplit]]]


def param_path(path) -> str:
  """A jax key path -> its '/'-joined name, e.g. ('classifier', 'kernel') -> 'classifier/kernel'."""
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


def _dot(a, b):
  return jnp.sum(a * b, axis=-1)


def _reference_blocks(blocks: jax.Array, scores: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The original's exact arithmetic for M = 2 (README §4)."""
  u, v = blocks[0], blocks[1]
  ratio_t = scores[0] / scores[1]
  ratio_i = 1.0 / ratio_t
  nu, nv = jnp.linalg.norm(u, axis=-1), jnp.linalg.norm(v, axis=-1)
  uv = _dot(u, v)
  cos = uv / (nu * nv)
  conflict = cos < 0  # False for NaN
  fix_u = conflict & (ratio_t < 1)
  fix_v = conflict & ~fix_u & (ratio_i < 1)

  def rewrite(a, b, nb):
    p = (_dot(a, b) / nb**2)[:, None] * b
    once, twice = a - p, a - 2.0 * p
    return jnp.linalg.norm(once, axis=-1, keepdims=True) * twice / jnp.linalg.norm(twice, axis=-1, keepdims=True)

  new_u = jnp.where(fix_u[:, None], rewrite(u, v, nv), u)
  new_v = jnp.where(fix_v[:, None], rewrite(v, u, nu), v)
  return jnp.stack([new_u, new_v]), jnp.stack([fix_u, fix_v])


def _pcgrad_blocks(blocks: jax.Array, scores: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Project each weaker block off every stronger conflicting one; keep its norm."""
  num_modalities = blocks.shape[0]
  order = jnp.argsort(scores, stable=True)  # weakest first
  sorted_blocks, sorted_scores = blocks[order], scores[order]
  new_sorted, changed_sorted = [], []
  for i in range(num_modalities):
    g = sorted_blocks[i]
    changed = jnp.zeros(g.shape[:1], bool)
    # Against the stronger modalities in increasing score, so the last projection is
    # against the strongest: the result never conflicts with the strongest block.
    for j in range(i + 1, num_modalities):
      other = sorted_blocks[j]
      dot = _dot(g, other)
      other_sq = _dot(other, other)
      hit = (dot < 0) & (sorted_scores[j] > sorted_scores[i])
      g = jnp.where(hit[:, None], g - (dot / jnp.where(hit, other_sq, 1.0))[:, None] * other, g)
      changed = changed | hit
    original_norm = jnp.linalg.norm(sorted_blocks[i], axis=-1)
    new_norm = jnp.linalg.norm(g, axis=-1)
    scale = jnp.where(changed & (new_norm > 0), original_norm / jnp.where(new_norm > 0, new_norm, 1.0), 1.0)
    new_sorted.append(g * scale[:, None])
    changed_sorted.append(changed)
  inverse = jnp.argsort(order)
  return jnp.stack(new_sorted)[inverse], jnp.stack(changed_sorted)[inverse]


@functools.partial(jax.jit, static_argnames=("mode",))
def coordinate_blocks(
  blocks: jax.Array, scores: jax.Array, *, mode: Mode = "pcgrad", skip: jax.Array | bool = False
) -> tuple[jax.Array, jax.Array]:
  """Coordinates per-modality gradient blocks row by row.

  'pcgrad' (default): in each row where modality m conflicts with a strictly
  higher-scoring modality k (g_m . g_k < 0), g_m <- g_m - (g_m . g_k / |g_k|^2) g_k,
  against each stronger k in increasing score (weakest modality first; projections use the
  stronger blocks' original values), then g_m is rescaled to its own original norm. For
  M = 2 the weaker block ends exactly orthogonal to the stronger one, the conflict removed.
  Equal scores edit nothing; any NaN score, or `skip`, leaves everything unchanged.

  'reference': the original's arithmetic for M = 2, where the projection is subtracted
  twice and the result rescaled to the once-projected norm: u_new = |sin θ| (u - 2p). That
  is a reflection of u in the plane orthogonal to v, so the conflicting component is
  flipped to agree with v (u_new . v = -|sin θ| u . v > 0) rather than removed, which is
  why 'pcgrad' is the default. Tests ratio_t = s_0/s_1 < 1 first, then 1/ratio_t < 1;
  ties and NaN cosines (a zero block) are unchanged.

  Args:
    blocks: (M, R, D) gradient blocks.
    scores: (M,) per-modality scores (higher = stronger modality).
    mode: 'pcgrad' or 'reference' (M = 2 only).
    skip: () bool; True returns the blocks unchanged (e.g. an all-censored survival batch).

  Returns:
    (new_blocks (M, R, D), changed (M, R) bool).
  """
  blocks = jnp.asarray(blocks)
  scores = jnp.asarray(scores, jnp.float32)
  if blocks.ndim != 3 or scores.shape != blocks.shape[:1]:
    raise ValueError(
      f"coordinate_blocks: expected blocks (M, R, D) and scores (M,), got {blocks.shape} and {scores.shape}"
    )
  if mode == "reference":
    if blocks.shape[0] != 2:
      raise ValueError(f"coordinate_blocks: mode='reference' needs M = 2 modalities, got {blocks.shape[0]}")
    new, changed = _reference_blocks(blocks, scores)
  elif mode == "pcgrad":
    if blocks.shape[0] < 2:
      raise ValueError(f"coordinate_blocks: need at least 2 modalities, got {blocks.shape[0]}")
    new, changed = _pcgrad_blocks(blocks, scores)
    skip = jnp.asarray(skip) | jnp.any(jnp.isnan(scores))
  else:
    raise ValueError(f"coordinate_blocks: mode must be 'pcgrad' or 'reference', got {mode!r}")
  skip = jnp.asarray(skip, bool)
  return jnp.where(skip, blocks, new), changed & ~skip


class CoordinationState(NamedTuple):
  """changed: {leaf path: (M, R) bool} which blocks the last update edited (for logging)."""

  changed: Mapping[str, jax.Array]


def _resolve(splits: Splits, name: str) -> Optional[ModalitySplit]:
  if callable(splits) and not isinstance(splits, Mapping):
    return splits(name)
  return splits.get(name)


def coordinate_gradients(splits: Splits, *, mode: Mode = "pcgrad") -> optax.GradientTransformationExtraArgs:
  """An optax transformation that coordinates the chosen leaves between modalities.

  Args:
    splits: which leaves are coordinated and how each splits into modality blocks: a
      mapping from '/'-joined parameter path (e.g. 'classifier/kernel') to a
      `ModalitySplit`, or a function path -> `ModalitySplit` or None. Every other leaf
      passes through unchanged. A mapping key that matches no leaf raises at `init`.
    mode: 'pcgrad' (default) or 'reference'; see `coordinate_blocks`.

  Returns:
    A `GradientTransformationExtraArgs`; its update takes the extra keyword arguments
    `modality_scores` ((M,) float, required) and `skip` (() bool, default False), e.g.
    `tx.update(grads, state, params, modality_scores=jnp.array([s_t, s_m]))`. Inside
    `optax.chain` the other transformations ignore them. jit-able: no Python control flow
    on values. The state records which rows were edited.
  """

  def leaves(tree):
    found = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
      name = param_path(path)
      split = _resolve(splits, name)
      if split is not None:
        found[name] = (split, leaf)
    return found

  def init_fn(params):
    found = leaves(params)
    if isinstance(splits, Mapping):
      missing = sorted(set(splits) - set(found))
      if missing:
        raise ValueError(
          f"coordinate_gradients: no parameter at paths {missing}; available: "
          f"{sorted(param_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0])}"
        )
    return CoordinationState(
      {name: jnp.zeros(split.split(leaf).shape[:2], bool) for name, (split, leaf) in found.items()}
    )

  def update_fn(updates, state, params=None, *, modality_scores=None, skip=False, **extra_args):
    del params, extra_args
    if modality_scores is None:
      raise ValueError("coordinate_gradients: update needs modality_scores=(M,) array")
    changed = {}

    def edit(path, leaf):
      name = param_path(path)
      split = _resolve(splits, name)
      if split is None:
        return leaf
      new, changed[name] = coordinate_blocks(split.split(leaf), modality_scores, mode=mode, skip=skip)
      return split.merge(new, leaf)

    new_updates = jax.tree_util.tree_map_with_path(edit, updates)
    return new_updates, CoordinationState(changed)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
