"""The WSI-only student: the subspace model with each gene embedding predicted from the slide.

Each subspace's SNN is replaced by a predictor on the slide's masked-mean patch feature, trained
(by distillation, `smml_jax.losses.distillation`) to give the embedding the teacher's SNN gives.
The branches and classifiers keep the subspace model's parameter names, so a teacher's weights
fit them. Inference needs `batch['patches']` only.
"""

from __future__ import annotations

from typing import Mapping

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from smml_jax.models.layers import TorchDense
from smml_jax.models.outputs import ModelOutput
from smml_jax.models.subspace_net import SubspaceConfig, fuse_subspaces


def tissue_mean(patches: jax.Array) -> jax.Array:
  """(B, N, D) -> (B, D) mean over the grid cells that hold tissue (empty cells are all zero)."""
  tissue = jnp.any(patches != 0, axis=-1, keepdims=True).astype(jnp.float32)
  total = jnp.sum(patches.astype(jnp.float32) * tissue, axis=1)
  return total / jnp.maximum(jnp.sum(tissue, axis=1), 1.0)


class GenePredictor(nn.Module):
  """Pooled patch feature (B, D) -> predicted gene embedding (B, dim), non-negative like the
  SNN's ReLU output: LayerNorm -> Dense(hidden) -> GELU -> Dropout -> Dense(dim) -> softplus."""

  dim: int
  hidden: int = 256
  dropout_rate: float = 0.1

  @nn.compact
  def __call__(self, pooled: jax.Array, *, train: bool = False) -> jax.Array:
    x = nn.LayerNorm(name="norm")(pooled)
    x = nn.gelu(TorchDense(self.hidden, name="hidden")(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.softplus(TorchDense(self.dim, name="out")(x))


class SubspaceStudent(nn.Module):
  """Call: batch {'patches' (B, N, D)} -> ModelOutput (genes in the batch are never read).

  gene_tumour / gene_micro hold the predicted gene embeddings (B, dim); the other fields are as
  `SubspaceNet`'s (logits (B, K), embeddings (B, dim), grids, per-subspace logits).
  """

  config: SubspaceConfig = SubspaceConfig()
  predictor_hidden: int = 256
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, batch: Mapping[str, jax.Array], *, train: bool = False) -> ModelOutput:
    cfg = self.config
    if cfg.single_subspace:
      raise ValueError("the student has two subspaces; single_subspace is not an option of it")
    patches = batch["patches"]
    chex.assert_rank(patches, 3)
    pooled = tissue_mean(patches)
    predictor = lambda name: GenePredictor(cfg.branch.dim, self.predictor_hidden, cfg.snn_dropout, name=name)
    gene_t = predictor("gene_predictor_tumour")(pooled, train=train)
    gene_m = predictor("gene_predictor_micro")(pooled, train=train)
    return fuse_subspaces(self, patches, gene_t, gene_m, train=train)
