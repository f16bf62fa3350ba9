"""Genomics-only baseline: the SNN gene encoder on all genes, then a linear classifier."""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import flax.linen as nn
import jax

from smml_jax.models.baselines.layers import all_genes
from smml_jax.models.outputs import ModelOutput
from smml_jax.models.snn import SNN


class SNNBaseline(nn.Module):
  """genes = [genes_tumour, genes_micro] (B, Gt + Gm) -> SNN (B, widths[-1]) -> Dense_K.

  Patches are never read. The default widths are the project SNN's (64, 48, 32, 128) with
  AlphaDropout 0.25, the rate Pathomic Fusion and MCAT use for their genomic SNNs.

  Returns `ModelOutput(logits (B, K), features = SNN embedding (B, widths[-1]))`.
  """

  num_classes: int = 4
  widths: Sequence[int] = (64, 48, 32, 128)
  dropout_rate: float = 0.25
  n_genes_tumour: Optional[int] = None  # When given, checked against the batch.
  n_genes_micro: Optional[int] = None

  @nn.compact
  def __call__(self, batch: Mapping[str, jax.Array], *, train: bool = False) -> ModelOutput:
    genes = all_genes(batch, model="SNNBaseline", n_genes_tumour=self.n_genes_tumour, n_genes_micro=self.n_genes_micro)
    embedding = SNN(tuple(self.widths), self.dropout_rate, name="snn")(genes, train=train)
    logits = nn.Dense(self.num_classes, name="classifier")(embedding)
    return ModelOutput(logits=logits, features=embedding)
