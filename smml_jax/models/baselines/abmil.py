"""ABMIL: gated attention multiple-instance learning on the patch bag (Ilse et al., ICML 2018)."""

from __future__ import annotations

from typing import Mapping, Optional

import flax.linen as nn
import jax

from smml_jax.models.baselines.layers import GatedAttention, PatchProjection, attention_pool, read_patches
from smml_jax.models.outputs import ModelOutput


class ABMIL(nn.Module):
  """Histology-only baseline; genes are ignored.

  patches (B, N, D) -> Dense_L -> ReLU -> Dropout -> gated attention weights a (B, N)
  -> z = sum_n a_n h_n (B, L) -> Dense_K. Sizes follow MCAT's AMIL baseline ("small": L = 256,
  attention hidden 256, dropout 0.25 on the projection and the attention branches).

  Returns `ModelOutput(logits (B, K), features z (B, L), attn_tumour a (B, N))`; here
  `attn_tumour` holds the MIL attention over patches (it sums to one over N), not a subspace map.
  """

  num_classes: int = 4
  hidden: int = 256
  attention_hidden: int = 256
  dropout_rate: float = 0.25
  attention_dropout_rate: float = 0.25
  feature_dim: Optional[int] = None  # When given, batch['patches'] must have this last axis.

  @nn.compact
  def __call__(self, batch: Mapping[str, jax.Array], *, train: bool = False) -> ModelOutput:
    patches = read_patches(batch, model="ABMIL", feature_dim=self.feature_dim)
    h = PatchProjection(self.hidden, self.dropout_rate, name="patch_projection")(patches, train=train)
    weights = GatedAttention(self.attention_hidden, self.attention_dropout_rate, name="gated_attention")(h, train=train)
    pooled = attention_pool(weights, h)
    logits = nn.Dense(self.num_classes, name="classifier")(pooled)
    return ModelOutput(logits=logits, features=pooled, attn_tumour=weights)
