"""MCAT: multimodal co-attention transformer (Chen et al., ICCV 2021).

Genomic groups (one SNN each) become G tokens that query the patch bag through co-attention;
each modality's token set then passes a small post-norm transformer encoder and gated-attention
pooling, and the two pooled vectors are concat-fused for the classifier. Sizes are MCAT's
"small" configuration: patch projection 1024 -> 256, group SNNs 256 -> 256, one co-attention
head, 2 transformer layers with 8 heads and feed-forward 512, dropout 0.25.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from smml_jax.models.baselines.layers import GatedAttention, PatchProjection, attention_pool, read_genes, read_patches
from smml_jax.models.outputs import ModelOutput
from smml_jax.models.snn import SNN


def default_group_sizes(n_genes_tumour: int, n_genes_micro: int, n_micro_groups: int) -> tuple[int, ...]:
  """The tumour set as one group, then the micro set in `n_micro_groups` contiguous chunks.

  Chunks are as equal as possible (numpy.array_split); empty sets/chunks are dropped, so a micro
  set smaller than `n_micro_groups` gives one group per gene.
  """
  if n_micro_groups < 1:
    raise ValueError(f"MCAT: n_micro_groups must be >= 1, got {n_micro_groups}")
  micro = [len(c) for c in np.array_split(np.arange(n_genes_micro), n_micro_groups) if len(c)]
  sizes = ([n_genes_tumour] if n_genes_tumour else []) + micro
  if not sizes:
    raise ValueError("MCAT: both gene sets are empty; at least one gene is needed")
  return tuple(sizes)


def check_group_sizes(group_sizes: Sequence[int], n_genes: int) -> tuple[int, ...]:
  """Validates a partition of the concatenated gene vector into contiguous groups."""
  sizes = tuple(int(s) for s in group_sizes)
  if not sizes or any(s < 1 for s in sizes):
    raise ValueError(f"MCAT: group_sizes must be positive integers, got {tuple(group_sizes)}")
  if sum(sizes) != n_genes:
    raise ValueError(
      f"MCAT: group_sizes {sizes} sum to {sum(sizes)} but the batch has {n_genes} genes (genes_tumour + genes_micro)"
    )
  return sizes


class CoAttention(nn.Module):
  """Multi-head attention of G queries over N keys/values (torch.nn.MultiheadAttention layout).

  queries (B, G, E), memory (B, N, E) -> (out (B, G, E), weights (B, H, G, N)), the weights
  summing to one over N for every head and query.
  """

  num_heads: int = 1
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, queries: jax.Array, memory: jax.Array, *, train: bool = False) -> tuple[jax.Array, jax.Array]:
    embed = queries.shape[-1]
    if embed % self.num_heads:
      raise ValueError(f"MCAT CoAttention: embedding {embed} not divisible by num_heads={self.num_heads}")
    head_dim = embed // self.num_heads
    split = lambda x: x.reshape(x.shape[:-1] + (self.num_heads, head_dim))
    q = split(nn.Dense(embed, name="query")(queries))
    k = split(nn.Dense(embed, name="key")(memory))
    v = split(nn.Dense(embed, name="value")(memory))
    logits = jnp.einsum("bghd,bnhd->bhgn", q, k) / np.sqrt(head_dim).astype(np.float32)
    weights = jax.nn.softmax(logits, axis=-1)
    dropped = nn.Dropout(self.dropout_rate, deterministic=not train)(weights)
    out = jnp.einsum("bhgn,bnhd->bghd", dropped, v).reshape(queries.shape[:-1] + (embed,))
    return nn.Dense(embed, name="out")(out), weights


class TransformerEncoderLayer(nn.Module):
  """torch.nn.TransformerEncoderLayer (post-norm, ReLU): (B, T, E) -> (B, T, E)."""

  num_heads: int = 8
  ff_hidden: int = 512
  dropout_rate: float = 0.25

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    dropout = lambda y: nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    attn = nn.MultiHeadDotProductAttention(
      num_heads=self.num_heads,
      dropout_rate=self.dropout_rate,
      broadcast_dropout=False,
      deterministic=not train,
      name="self_attention",
    )(x, x)
    x = nn.LayerNorm(epsilon=1e-5, name="norm_1")(x + dropout(attn))
    ff = nn.Dense(self.ff_hidden, name="ff_1")(x)
    ff = nn.Dense(x.shape[-1], name="ff_2")(dropout(nn.relu(ff)))
    return nn.LayerNorm(epsilon=1e-5, name="norm_2")(x + dropout(ff))


class TokenPooling(nn.Module):
  """Transformer encoder -> gated attention pooling -> Dense -> ReLU -> Dropout.

  tokens (B, T, E) -> (pooled (B, E), weights (B, T)).
  """

  num_layers: int = 2
  num_heads: int = 8
  ff_hidden: int = 512
  attention_hidden: int = 256
  dropout_rate: float = 0.25

  @nn.compact
  def __call__(self, tokens: jax.Array, *, train: bool = False) -> tuple[jax.Array, jax.Array]:
    x = tokens
    for i in range(self.num_layers):
      x = TransformerEncoderLayer(self.num_heads, self.ff_hidden, self.dropout_rate, name=f"transformer_{i}")(
        x, train=train
      )
    weights = GatedAttention(self.attention_hidden, self.dropout_rate, name="gated_attention")(x, train=train)
    pooled = nn.relu(nn.Dense(x.shape[-1], name="rho")(attention_pool(weights, x)))
    return nn.Dropout(self.dropout_rate, deterministic=not train)(pooled), weights


class MCAT(nn.Module):
  """Genomic-guided co-attention over the patch bag, then per-modality transformers, concat fusion.

  Genes: [genes_tumour, genes_micro] (B, Gt + Gm) split into contiguous groups (`group_sizes`,
  default `default_group_sizes(Gt, Gm, n_micro_groups)`: the tumour set, then the micro set in
  `n_micro_groups` chunks); group g -> SNN(widths) = token g, giving genomic tokens (B, G, E).
  Patches (B, N, D) -> Dense_E -> ReLU -> Dropout. Co-attention (genomic tokens as queries)
  gives G genomic-guided histology tokens (B, G, E). Each token set -> `TokenPooling`; concat
  (B, 2E) -> Dense -> ReLU -> Dense -> ReLU -> classifier.

  Returns `ModelOutput(logits (B, K), features = concat of pooled [histology, genomic] (B, 2E),
  attn_micro = co-attention weights (B, heads, G, N) summing to one over N)`. Sows in
  'intermediates' the pooling weights over the G tokens: `path_pool_weights`,
  `gene_pool_weights` (B, G).
  """

  num_classes: int = 4
  embed_dim: int = 256
  gene_widths: Sequence[int] = (256, 256)
  group_sizes: Optional[Sequence[int]] = None
  n_micro_groups: int = 5
  coattn_heads: int = 1
  num_layers: int = 2
  transformer_heads: int = 8
  ff_hidden: int = 512
  attention_hidden: int = 256
  fusion_hidden: int = 256
  dropout_rate: float = 0.25
  gene_dropout_rate: float = 0.25
  feature_dim: Optional[int] = None
  n_genes_tumour: Optional[int] = None
  n_genes_micro: Optional[int] = None

  @nn.compact
  def __call__(self, batch: Mapping[str, jax.Array], *, train: bool = False) -> ModelOutput:
    patches = read_patches(batch, model="MCAT", feature_dim=self.feature_dim)
    tumour, micro = read_genes(
      batch, model="MCAT", n_genes_tumour=self.n_genes_tumour, n_genes_micro=self.n_genes_micro
    )
    genes = jnp.concatenate([tumour, micro], axis=-1)
    if self.group_sizes is None:
      sizes = default_group_sizes(tumour.shape[-1], micro.shape[-1], self.n_micro_groups)
    else:
      sizes = check_group_sizes(self.group_sizes, genes.shape[-1])
    if tuple(self.gene_widths)[-1] != self.embed_dim:
      raise ValueError(
        f"MCAT: gene_widths[-1] = {tuple(self.gene_widths)[-1]} must equal "
        f"embed_dim = {self.embed_dim} (genomic tokens query the patch tokens)"
      )

    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    gene_tokens = jnp.stack(
      [
        SNN(tuple(self.gene_widths), self.gene_dropout_rate, name=f"group_snn_{g}")(
          genes[:, start : start + size], train=train
        )
        for g, (start, size) in enumerate(zip(starts, sizes))
      ],
      axis=1,
    )
    path_tokens = PatchProjection(self.embed_dim, self.dropout_rate, name="patch_projection")(patches, train=train)
    coattended, coattn = CoAttention(self.coattn_heads, name="coattention")(gene_tokens, path_tokens, train=train)

    pool = lambda name: TokenPooling(
      self.num_layers, self.transformer_heads, self.ff_hidden, self.attention_hidden, self.dropout_rate, name=name
    )
    h_path, path_weights = pool("path_pooling")(coattended, train=train)
    h_gene, gene_weights = pool("gene_pooling")(gene_tokens, train=train)
    self.sow("intermediates", "path_pool_weights", path_weights)
    self.sow("intermediates", "gene_pool_weights", gene_weights)

    features = jnp.concatenate([h_path, h_gene], axis=-1)
    h = nn.relu(nn.Dense(self.fusion_hidden, name="fusion_1")(features))
    h = nn.relu(nn.Dense(self.fusion_hidden, name="fusion_2")(h))
    logits = nn.Dense(self.num_classes, name="classifier")(h)
    return ModelOutput(logits=logits, features=features, attn_micro=coattn)
