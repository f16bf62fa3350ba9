"""PyTorch's default initialisation, so freshly built models train like the original."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def torch_uniform(fan_in: int):
  """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): torch's default for Linear/Conv weights and biases."""
  bound = 1.0 / np.sqrt(fan_in)

  def init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def torch_dense_init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
  """Kernel init for a Dense of kernel shape (..., fan_in, fan_out)."""
  return torch_uniform(shape[-2])(key, shape, dtype)
