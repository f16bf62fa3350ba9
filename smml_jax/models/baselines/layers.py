"""Building blocks shared by the comparison baselines: batch checks, gated attention pooling."""

from __future__ import annotations

from typing import Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp


def _field(
  batch: Mapping[str, jax.Array], key: str, rank: int, model: str, expected_last: Optional[int], what: str
) -> jax.Array:
  if key not in batch:
    raise ValueError(f"{model}: batch has no field {key!r} (expected {what}); fields present: {sorted(batch)}")
  x = jnp.asarray(batch[key])
  if x.ndim != rank:
    raise ValueError(f"{model}: batch[{key!r}] has shape {x.shape}, expected {what}")
  if expected_last is not None and x.shape[-1] != expected_last:
    raise ValueError(f"{model}: batch[{key!r}] has shape {x.shape}, expected {what} with last axis {expected_last}")
  return x


def read_patches(batch: Mapping[str, jax.Array], *, model: str, feature_dim: Optional[int] = None) -> jax.Array:
  """`batch['patches']` (B, N, D) as float32, checked (D against `feature_dim` when given)."""
  x = _field(batch, "patches", 3, model, feature_dim, "(B, N, D) patch features")
  if x.shape[1] == 0:
    raise ValueError(f"{model}: batch['patches'] has shape {x.shape}: the bag is empty (N = 0)")
  return x.astype(jnp.float32)


def read_genes(
  batch: Mapping[str, jax.Array],
  *,
  model: str,
  n_genes_tumour: Optional[int] = None,
  n_genes_micro: Optional[int] = None,
) -> tuple[jax.Array, jax.Array]:
  """(`genes_tumour` (B, Gt), `genes_micro` (B, Gm)) as float32, checked against the sizes given."""
  tumour = _field(batch, "genes_tumour", 2, model, n_genes_tumour, "(B, Gt) tumour genes")
  micro = _field(batch, "genes_micro", 2, model, n_genes_micro, "(B, Gm) micro genes")
  if tumour.shape[0] != micro.shape[0]:
    raise ValueError(
      f"{model}: batch['genes_tumour'] {tumour.shape} and batch['genes_micro'] {micro.shape} disagree on the batch size"
    )
  return tumour.astype(jnp.float32), micro.astype(jnp.float32)


def all_genes(
  batch: Mapping[str, jax.Array],
  *,
  model: str,
  n_genes_tumour: Optional[int] = None,
  n_genes_micro: Optional[int] = None,
) -> jax.Array:
  """Tumour then micro genes concatenated: (B, Gt + Gm)."""
  tumour, micro = read_genes(batch, model=model, n_genes_tumour=n_genes_tumour, n_genes_micro=n_genes_micro)
  return jnp.concatenate([tumour, micro], axis=-1)


class GatedAttention(nn.Module):
  """Gated attention weights of Ilse et al. (2018), as CLAM/MCAT's `Attn_Net_Gated`.

  a_n = w^T (tanh(V h_n) * sigmoid(U h_n)), softmax over the N instances.
  Input (B, N, L) -> weights (B, N) that sum to one over N.
  """

  hidden: int = 256
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, h: jax.Array, *, train: bool = False) -> jax.Array:
    v = jnp.tanh(nn.Dense(self.hidden, name="attention_v")(h))
    u = nn.sigmoid(nn.Dense(self.hidden, name="attention_u")(h))
    v = nn.Dropout(self.dropout_rate, deterministic=not train)(v)
    u = nn.Dropout(self.dropout_rate, deterministic=not train)(u)
    scores = nn.Dense(1, name="attention_w")(v * u)[..., 0]
    return jax.nn.softmax(scores, axis=-1)


def attention_pool(weights: jax.Array, h: jax.Array) -> jax.Array:
  """Weighted sum over instances: weights (B, N), h (B, N, L) -> (B, L)."""
  return jnp.einsum("bn,bnl->bl", weights, h)


class PatchProjection(nn.Module):
  """Per-patch Dense -> ReLU -> Dropout: (B, N, D) -> (B, N, L)."""

  features: int = 256
  dropout_rate: float = 0.25

  @nn.compact
  def __call__(self, patches: jax.Array, *, train: bool = False) -> jax.Array:
    h = nn.relu(nn.Dense(self.features, name="dense")(patches))
    return nn.Dropout(self.dropout_rate, deterministic=not train)(h)
