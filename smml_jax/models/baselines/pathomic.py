"""Pathomic Fusion (Chen et al., IEEE TMI 2020): gated attention + Kronecker-product fusion.

Per modality m in {path, gene} with embeddings h_p, h_g (the "BilinearFusion" block of the
original code):
  h_m' = ReLU(W_m h_m)                       (reduced to d_m, e.g. 32)
  z_m  = W_z [h_p, h_g]   (or bilinear h_p^T W_z h_g with `bilinear_gate=True`, as the code)
  o_m  = Dropout(ReLU(W_o (sigmoid(z_m) * h_m')))
  fused = flatten([o_p, 1] outer [o_g, 1])   -> (d_p + 1) * (d_g + 1) features
The appended 1s keep both unimodal vectors inside the fused one (row d_p is [o_g, 1], column d_g
is [o_p, 1]). Then Dropout -> Dense_H -> ReLU -> Dropout, optional skip concat with [o_p, 1] and
[o_g, 1], Dense_H -> ReLU -> Dropout, classifier.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from smml_jax.models.baselines.layers import GatedAttention, PatchProjection, all_genes, attention_pool, read_patches
from smml_jax.models.outputs import ModelOutput
from smml_jax.models.snn import SNN


def append_one(x: jax.Array) -> jax.Array:
  """(B, d) -> (B, d + 1) with a trailing 1."""
  return jnp.concatenate([x, jnp.ones(x.shape[:-1] + (1,), x.dtype)], axis=-1)


def kronecker_fusion(h_path: jax.Array, h_gene: jax.Array) -> jax.Array:
  """flatten([h_path, 1] outer [h_gene, 1]): (B, d_p), (B, d_g) -> (B, (d_p + 1) * (d_g + 1)).

  Entry i * (d_g + 1) + j is [h_path, 1]_i * [h_gene, 1]_j.
  """
  outer = jnp.einsum("bi,bj->bij", append_one(h_path), append_one(h_gene))
  return outer.reshape(outer.shape[0], -1)


class Bilinear(nn.Module):
  """torch.nn.Bilinear: y_k = x1^T W_k x2 + b_k; (B, d1), (B, d2) -> (B, features)."""

  features: int

  @nn.compact
  def __call__(self, x1: jax.Array, x2: jax.Array) -> jax.Array:
    bound = 1.0 / jnp.sqrt(x1.shape[-1])
    init = lambda key, shape: jax.random.uniform(key, shape, jnp.float32, -bound, bound)
    kernel = self.param("kernel", init, (self.features, x1.shape[-1], x2.shape[-1]))
    bias = self.param("bias", init, (self.features,))
    return jnp.einsum("bi,kij,bj->bk", x1, kernel, x2) + bias


class GatedModality(nn.Module):
  """o_m = Dropout(ReLU(W_o (sigmoid(z_m) * ReLU(W_m h_m)))), the gate z_m seeing both modalities."""

  features: int = 32
  dropout_rate: float = 0.25
  bilinear_gate: bool = False

  @nn.compact
  def __call__(self, h_self: jax.Array, h_path: jax.Array, h_gene: jax.Array, *, train: bool = False) -> jax.Array:
    h = nn.relu(nn.Dense(self.features, name="reduce")(h_self))
    if self.bilinear_gate:
      z = Bilinear(self.features, name="gate")(h_path, h_gene)
    else:
      z = nn.Dense(self.features, name="gate")(jnp.concatenate([h_path, h_gene], axis=-1))
    o = nn.relu(nn.Dense(self.features, name="out")(nn.sigmoid(z) * h))
    return nn.Dropout(self.dropout_rate, deterministic=not train)(o)


class PathomicFusion(nn.Module):
  """Histology (gated-attention MIL) + genomics (SNN on all genes), Kronecker-fused.

  Histology: patches -> Dense_P -> ReLU -> Dropout -> gated attention pooling -> Dense_P -> ReLU
  -> Dropout = h_p (B, P). Genomics: SNN([genes_tumour, genes_micro]) = h_g (B, widths[-1]).
  Defaults: P = 256 (MCAT's MIL sizes), fusion dims 32 each and encoder width 64 with skip
  (Pathomic Fusion's), dropout 0.25, the gate a Dense on [h_p, h_g] as the paper writes it.

  Returns `ModelOutput(logits (B, K), features = fusion encoder output (B, H), attn_tumour =
  MIL attention over patches (B, N))`. Sows in 'intermediates': `gated_path` (B, d_p),
  `gated_gene` (B, d_g) and `kronecker` (B, (d_p + 1) * (d_g + 1)).
  """

  num_classes: int = 4
  path_hidden: int = 256
  attention_hidden: int = 256
  gene_widths: Sequence[int] = (64, 48, 32, 128)
  path_fusion_dim: int = 32
  gene_fusion_dim: int = 32
  fusion_hidden: int = 64
  skip: bool = True
  bilinear_gate: bool = False
  dropout_rate: float = 0.25
  gene_dropout_rate: float = 0.25
  feature_dim: Optional[int] = None
  n_genes_tumour: Optional[int] = None
  n_genes_micro: Optional[int] = None

  @nn.compact
  def __call__(self, batch: Mapping[str, jax.Array], *, train: bool = False) -> ModelOutput:
    patches = read_patches(batch, model="PathomicFusion", feature_dim=self.feature_dim)
    genes = all_genes(
      batch, model="PathomicFusion", n_genes_tumour=self.n_genes_tumour, n_genes_micro=self.n_genes_micro
    )
    dropout = lambda x: nn.Dropout(self.dropout_rate, deterministic=not train)(x)

    h = PatchProjection(self.path_hidden, self.dropout_rate, name="patch_projection")(patches, train=train)
    weights = GatedAttention(self.attention_hidden, self.dropout_rate, name="gated_attention")(h, train=train)
    h_path = dropout(nn.relu(nn.Dense(self.path_hidden, name="path_rho")(attention_pool(weights, h))))
    h_gene = SNN(tuple(self.gene_widths), self.gene_dropout_rate, name="snn")(genes, train=train)

    o_path = GatedModality(self.path_fusion_dim, self.dropout_rate, self.bilinear_gate, name="gate_path")(
      h_path, h_path, h_gene, train=train
    )
    o_gene = GatedModality(self.gene_fusion_dim, self.dropout_rate, self.bilinear_gate, name="gate_gene")(
      h_gene, h_path, h_gene, train=train
    )
    fused = kronecker_fusion(o_path, o_gene)
    self.sow("intermediates", "gated_path", o_path)
    self.sow("intermediates", "gated_gene", o_gene)
    self.sow("intermediates", "kronecker", fused)

    out = dropout(nn.relu(nn.Dense(self.fusion_hidden, name="encoder_1")(dropout(fused))))
    if self.skip:
      out = jnp.concatenate([out, append_one(o_path), append_one(o_gene)], axis=-1)
    out = dropout(nn.relu(nn.Dense(self.fusion_hidden, name="encoder_2")(out)))
    logits = nn.Dense(self.num_classes, name="classifier")(out)
    return ModelOutput(logits=logits, features=out, attn_tumour=weights)
