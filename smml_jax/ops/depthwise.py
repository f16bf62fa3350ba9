"""Strided depthwise convolution as a sum of strided slices.

XLA's CPU backend runs grouped convolutions (feature_group_count = channels) and especially their
gradients slowly; the offset network's 6 x 6 stride-4 depthwise conv on a small map is cheaper
as kernel_size^ndim strided slices times per-channel weights, whose gradient is a pad.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def depthwise_conv(x: jax.Array, kernel: jax.Array, bias: jax.Array, stride: int,
                   padding: int) -> jax.Array:
  """Cross-correlation of each channel with its own filter, zero padding, channel-last.

  Args:
    x: (B, *spatial, C) with 1 or 2 spatial dims.
    kernel: (*kernel_size, 1, C) (Flax HWIO layout with one input channel per group).
    bias: (C,).
    stride, padding: the same on every spatial dim.

  Returns:
    (B, *out, C) with out = (size + 2 * padding - k) // stride + 1, equal to
    `lax.conv_general_dilated(..., feature_group_count=C)`.
  """
  ndim = x.ndim - 2
  ksize = kernel.shape[:ndim]
  x = jnp.pad(x, ((0, 0),) + ((padding, padding),) * ndim + ((0, 0),))
  out_size = [(x.shape[1 + d] - ksize[d]) // stride + 1 for d in range(ndim)]
  w = kernel.reshape(*ksize, kernel.shape[-1]).astype(x.dtype)
  out = None
  for offset in _ndindex(ksize):
    window = x[(slice(None),) + tuple(
        slice(o, o + stride * (n - 1) + 1, stride) for o, n in zip(offset, out_size))]
    term = window * w[offset]
    out = term if out is None else out + term
  return out + bias.astype(x.dtype)


def _ndindex(shape):
  if len(shape) == 1:
    return [(i,) for i in range(shape[0])]
  return [(i, j) for i in range(shape[0]) for j in range(shape[1])]
