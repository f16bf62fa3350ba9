"""One subspace branch: histology tokens fused with one gene embedding, then deformable attention."""

from __future__ import annotations

import dataclasses

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from smml_jax.models.deform_attention import DeformAttentionConfig, DeformCrossAttention
from smml_jax.models.layers import TorchDense


@dataclasses.dataclass(frozen=True)
class BranchConfig:
  dim: int = 128
  attention: DeformAttentionConfig = DeformAttentionConfig()
  # The original normalises the fused tokens and the histology tokens with ONE shared LayerNorm.
  separate_norms: bool = False
  layer_norm_eps: float = 1e-5


class SubspaceBranch(nn.Module):
  """The original's DeformCrossTransMIL branch.

  Call: (patches (B, N, D), gene_embedding (B, dim)) -> (embedding (B, dim), grid, key_mass).
  1. path = ReLU(Dense(patches)); 2-3. fused = Dense(concat(path, gene repeated over tokens));
  4. fused += Attn(LN(fused), LN(path)); 5. pooled = tanh(Dense(mean_tokens(LN'(fused))));
  6. embedding = Dense(pooled). Intermediates are sown under 'intermediates'.
  """

  config: BranchConfig = BranchConfig()
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, patches: jax.Array, gene_embedding: jax.Array, *, train: bool = False):
    cfg = self.config
    chex.assert_rank(patches, 3)
    chex.assert_rank(gene_embedding, 2)
    chex.assert_equal(patches.shape[0], gene_embedding.shape[0])
    chex.assert_equal(gene_embedding.shape[-1], cfg.dim)
    dense = lambda name, **kw: TorchDense(cfg.dim, dtype=self.dtype, name=name, **kw)
    layer_norm = lambda name: nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=jnp.float32, name=name)

    path = nn.relu(dense("patch_proj")(patches))
    self.sow("intermediates", "path", path)
    # Dense(concat(path, gene repeated)) without materialising the repeated gene tokens.
    fusion = dense("fusion")
    fusion_in = jnp.concatenate([path, jnp.broadcast_to(gene_embedding[:, None, :].astype(path.dtype), path.shape)], -1)
    fused = fusion(fusion_in)
    self.sow("intermediates", "fused", fused)

    norm_q = layer_norm("layer_norm")
    norm_kv = layer_norm("layer_norm_kv") if cfg.separate_norms else norm_q
    attn_out, grid, key_mass = DeformCrossAttention(cfg.attention, self.dtype, name="attention")(
      norm_q(fused).astype(self.dtype), norm_kv(path).astype(self.dtype), train=train
    )
    fused = fused + attn_out
    self.sow("intermediates", "layer_out", fused)

    pooled = jnp.tanh(dense("pooler")(layer_norm("final_norm")(fused).mean(axis=1)))
    self.sow("intermediates", "pooled", pooled)
    embedding = dense("projection")(pooled)
    return embedding, grid, key_mass
