"""Self-normalising gene encoder (the original's "MaxNet")."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# SELU's negative saturation value, -scale * alpha (torch.nn.AlphaDropout's constant).
_ALPHA_PRIME = 1.7580993408473766


def max_init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
  """The original's "max" init for a Dense kernel (fan_in, fan_out): N(0, 1 / fan_in)."""
  return jax.random.normal(key, shape, dtype) / np.sqrt(shape[0]).astype(dtype)


class AlphaDropout(nn.Module):
  """torch.nn.AlphaDropout: dropout that keeps SELU activations' mean and variance.

  Kept units become a * x + a * alpha' * p, dropped units a * alpha' * (p - 1), with
  a = ((alpha'^2 p + 1)(1 - p))^(-1/2). Identity when `deterministic`.
  """

  rate: float = 0.1

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
    if deterministic or self.rate == 0.0:
      return x
    p = self.rate
    a = ((_ALPHA_PRIME**2 * p + 1.0) * (1.0 - p)) ** -0.5
    keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - p, x.shape)
    return jnp.where(keep, a * x + a * _ALPHA_PRIME * p, a * _ALPHA_PRIME * (p - 1.0)).astype(x.dtype)


class SNN(nn.Module):
  """Four blocks Dense -> ELU -> AlphaDropout, then ReLU.

  Input (B, n_genes) -> output (B, widths[-1]). The default widths are the original's
  64 -> 48 -> 32 -> 128. The final ReLU follows the last block's AlphaDropout, exactly as the
  original computes it in train mode.
  """

  widths: Sequence[int] = (64, 48, 32, 128)
  dropout_rate: float = 0.1
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, genes: jax.Array, *, train: bool = False) -> jax.Array:
    x = genes.astype(self.dtype)
    for i, width in enumerate(self.widths):
      x = nn.Dense(width, kernel_init=max_init, bias_init=nn.initializers.zeros, dtype=self.dtype, name=f"dense_{i}")(x)
      x = nn.elu(x)
      x = AlphaDropout(self.dropout_rate, name=f"alpha_dropout_{i}")(x, deterministic=not train)
    return nn.relu(x)
