"""Small layers with the original's parameter layout and initialisation."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from smml_jax.models.init import torch_dense_init, torch_uniform


class TorchDense(nn.Module):
  """nn.Linear: y = x W^T + b, kernel (in, out) = W^T, torch default init."""

  features: int
  use_bias: bool = True
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    fan_in = x.shape[-1]
    kernel = self.param("kernel", torch_dense_init, (fan_in, self.features))
    y = x.astype(self.dtype) @ kernel.astype(self.dtype)
    if self.use_bias:
      y = y + self.param("bias", torch_uniform(fan_in), (self.features,)).astype(self.dtype)
    return y


class GroupedDense(nn.Module):
  """A grouped 1x1 convolution without bias, channel-last.

  Input (..., C_in) -> output (..., C_out); output channel g * (C_out / G) + e reads only input
  channels [g * C_in / G, (g + 1) * C_in / G). Kernel (G, C_in / G, C_out / G).
  """

  features: int
  groups: int = 1
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c_in, g = x.shape[-1], self.groups
    if c_in % g or self.features % g:
      raise ValueError(f"GroupedDense: channels in={c_in}, out={self.features} must divide by groups={g}")
    kernel = self.param("kernel", torch_dense_init, (g, c_in // g, self.features // g))
    xg = x.astype(self.dtype).reshape(*x.shape[:-1], g, c_in // g)
    y = jnp.einsum("...gi,gio->...go", xg, kernel.astype(self.dtype))
    return y.reshape(*x.shape[:-1], self.features)
