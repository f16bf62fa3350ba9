"""Strided depthwise convolution as one-hot selection matmuls.

XLA's CPU backend runs grouped convolutions (feature_group_count = channels) and especially their
gradients slowly, and a sum of kernel_size^ndim strided slices has a gradient of as many pads
that XLA fuses into one slow loop. Here the offset network's 6 x 6 stride-4 depthwise conv is
two small contractions per spatial dim with constant 0/1 selection matrices (which also apply
the zero padding): a few MFLOP, and the gradient is matmuls too.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _selection(size: int, out: int, ksize: int, stride: int, padding: int, dtype) -> jax.Array:
  """E (out, ksize, size), E[o, a, h] = 1 where h = stride * o + a - padding (0 in the padding)."""
  o = jnp.arange(out)[:, None, None]
  a = jnp.arange(ksize)[None, :, None]
  h = jnp.arange(size)[None, None, :]
  return (h == stride * o + a - padding).astype(dtype)


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
  w = kernel.reshape(*ksize, kernel.shape[-1]).astype(x.dtype)
  sel = [_selection(x.shape[1 + d], (x.shape[1 + d] + 2 * padding - ksize[d]) // stride + 1,
                    ksize[d], stride, padding, x.dtype) for d in range(ndim)]
  if ndim == 1:
    windows = jnp.einsum("blc,ial->biac", x, sel[0])
    out = jnp.einsum("biac,ac->bic", windows, w)
  elif ndim == 2:
    rows = jnp.einsum("bhwc,iah->biawc", x, sel[0])  # (B, OH, kh, W, C)
    column_filters = jnp.einsum("jew,aec->ajwc", sel[1], w)  # (kh, OW, W, C)
    out = jnp.einsum("biawc,ajwc->bijc", rows, column_filters)
  else:
    raise ValueError(f"depthwise_conv supports 1 or 2 spatial dims, got x of shape {x.shape}")
  return out + bias.astype(x.dtype)
