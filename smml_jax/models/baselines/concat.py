"""Late-fusion baseline: mean-pooled patch projection concatenated with the SNN gene embedding."""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from smml_jax.models.baselines.layers import PatchProjection, all_genes, read_patches
from smml_jax.models.outputs import ModelOutput
from smml_jax.models.snn import SNN


class ConcatFusion(nn.Module):
  """Histology mean(ReLU(Dense_P patches)) (B, P) ++ SNN(all genes) (B, widths[-1]) -> MLP.

  The fused MLP is Dense_H -> ReLU -> Dropout -> Dense_K.
  Returns `ModelOutput(logits (B, K), features = the concatenation (B, P + widths[-1]))`.
  """

  num_classes: int = 4
  path_hidden: int = 256
  gene_widths: Sequence[int] = (64, 48, 32, 128)
  fusion_hidden: int = 256
  dropout_rate: float = 0.25
  gene_dropout_rate: float = 0.25
  feature_dim: Optional[int] = None
  n_genes_tumour: Optional[int] = None
  n_genes_micro: Optional[int] = None

  @nn.compact
  def __call__(self, batch: Mapping[str, jax.Array], *, train: bool = False) -> ModelOutput:
    patches = read_patches(batch, model="ConcatFusion", feature_dim=self.feature_dim)
    genes = all_genes(batch, model="ConcatFusion", n_genes_tumour=self.n_genes_tumour, n_genes_micro=self.n_genes_micro)
    h_path = PatchProjection(self.path_hidden, self.dropout_rate, name="patch_projection")(patches, train=train).mean(
      axis=1
    )
    h_gene = SNN(tuple(self.gene_widths), self.gene_dropout_rate, name="snn")(genes, train=train)
    features = jnp.concatenate([h_path, h_gene], axis=-1)
    h = nn.relu(nn.Dense(self.fusion_hidden, name="fusion_dense")(features))
    h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
    logits = nn.Dense(self.num_classes, name="classifier")(h)
    return ModelOutput(logits=logits, features=features)
