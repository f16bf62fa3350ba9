"""What the TPU (`pallas_attention`) and GPU (`pallas_attention_gpu`) CPB-attention kernels share:
their argument checks and custom_vjp plumbing."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def check_arguments(q, pos_k, cpb_params, softmax_dtype) -> None:
  """Raises ValueError for what the Pallas CPB-attention kernels do not implement.

  q: (B, H, N, Dh); pos_k: (B, G, M, D); cpb_params: the CPB MLP's [(W, b), ...].
  """
  if jnp.dtype(softmax_dtype) != jnp.float32:
    raise ValueError(
      f"the pallas CPB attention computes its softmax in float32; got softmax_dtype={jnp.dtype(softmax_dtype).name}"
    )
  if len(cpb_params) < 2:
    raise ValueError(
      f"the pallas CPB attention needs a CPB MLP with at least one hidden layer; got {len(cpb_params)} layer(s)"
    )
  h, groups = q.shape[1], pos_k.shape[1]
  if h % groups or cpb_params[-1][0].shape[1] != h // groups:
    raise ValueError(
      f"{h} heads do not split into {groups} offset groups of {cpb_params[-1][0].shape[1]} (the CPB MLP's outputs)"
    )


def materialise(cotangent, shape, dtype) -> jax.Array:
  """A custom_vjp cotangent (symbolic_zeros=True) as an array: zeros for a symbolic zero."""
  if isinstance(cotangent, jax.custom_derivatives.SymbolicZero):
    return jnp.zeros(shape, dtype)
  return cotangent


def round_up(x: int, multiple: int) -> int:
  return -(-x // multiple) * multiple
