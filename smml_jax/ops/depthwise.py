"""Strided depthwise convolution as one-hot selection matmuls.

XLA's CPU backend runs grouped convolutions (feature_group_count = channels) and especially their
gradients slowly, and a sum of kernel_size^ndim strided slices has a gradient of as many pads
that XLA fuses into one slow loop. Here the offset network's 6 x 6 stride-4 depthwise conv is
two small contractions per spatial dim with constant 0/1 selection matrices (which also apply
the zero padding): a few MFLOP, and the gradient is matmuls too. On the CPU the 2D case runs in
the native kernel of `ops/native/depthwise.cc` instead, where the selection form spends most of its
time transposing its (B, OH, KH, W, C) intermediate. Which one runs is chosen by the platform the
computation is compiled for (`ops/dispatch.py`), never by the host's default backend.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from smml_jax.ops import dispatch, native

IMPLEMENTATIONS = ("auto", "selection", "native")


def _selection(size: int, out: int, ksize: int, stride: int, padding: int, dtype) -> jax.Array:
  """E (out, ksize, size), E[o, a, h] = 1 where h = stride * o + a - padding (0 in the padding)."""
  o = jnp.arange(out)[:, None, None]
  a = jnp.arange(ksize)[None, :, None]
  h = jnp.arange(size)[None, None, :]
  return (h == stride * o + a - padding).astype(dtype)


def native_available(x: jax.Array) -> bool:
  """True when the native (CPU) kernel implements this conv: 2D, float32, kernels built."""
  return x.ndim == 4 and x.dtype == jnp.float32 and native.load()


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _native_conv2d(x, kernel, bias, stride, padding):
  return _native_forward(x, kernel, bias, stride, padding)


def _native_forward(x, kernel, bias, stride, padding):
  b, h, w, c = x.shape
  kh, kw = kernel.shape[:2]
  out = jax.ShapeDtypeStruct(
    (b, (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1, c), jnp.float32
  )
  return jax.ffi.ffi_call(native.DEPTHWISE_FORWARD_TARGET, out, vmap_method="sequential")(
    x, kernel.reshape(kh, kw, c), bias, stride=np.int64(stride), padding=np.int64(padding)
  )


def _native_fwd(x, kernel, bias, stride, padding):
  return _native_forward(x, kernel, bias, stride, padding), (x, kernel)


def _native_bwd(stride, padding, residuals, g):
  x, kernel = residuals
  kh, kw, c = kernel.shape[0], kernel.shape[1], x.shape[-1]
  shapes = (
    jax.ShapeDtypeStruct(x.shape, jnp.float32),
    jax.ShapeDtypeStruct((kh, kw, c), jnp.float32),
    jax.ShapeDtypeStruct((c,), jnp.float32),
  )
  g_x, g_kernel, g_bias = jax.ffi.ffi_call(native.DEPTHWISE_BACKWARD_TARGET, shapes, vmap_method="sequential")(
    x, kernel.reshape(kh, kw, c), g.astype(jnp.float32), stride=np.int64(stride), padding=np.int64(padding)
  )
  return g_x, g_kernel.reshape(kernel.shape), g_bias


_native_conv2d.defvjp(_native_fwd, _native_bwd)


def depthwise_conv(
  x: jax.Array,
  kernel: jax.Array,
  bias: jax.Array,
  stride: int,
  padding: int,
  implementation: str = "auto",
  platform: Optional[str] = None,
) -> jax.Array:
  """Cross-correlation of each channel with its own filter, zero padding, channel-last.

  Args:
    x: (B, *spatial, C) with 1 or 2 spatial dims.
    kernel: (*kernel_size, 1, C) (Flax HWIO layout with one input channel per group).
    bias: (C,).
    stride, padding: the same on every spatial dim.
    implementation: "selection" (the matmuls, any backend), "native" (the CPU kernel; 2D float32)
      or "auto" ("native" on the CPU where it implements the conv, else "selection").
    platform: the platform the computation is compiled for; None resolves "auto" per lowering
      platform with `jax.lax.platform_dependent`.

  Returns:
    (B, *out, C) with out = (size + 2 * padding - k) // stride + 1, equal to
    `lax.conv_general_dilated(..., feature_group_count=C)`.
  """
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"unknown depthwise implementation {implementation!r}; expected one of {IMPLEMENTATIONS}")
  if implementation == "native" and platform is not None and platform != "cpu":
    raise dispatch.DispatchError(
      f"the native depthwise conv runs on the CPU only; this computation is compiled for {platform!r} devices"
    )
  if implementation == "auto":
    if not native_available(x) or (platform is not None and platform != "cpu"):
      implementation = "selection"
    elif platform == "cpu":
      implementation = "native"
    else:  # no platform given: decided where the computation is lowered
      return jax.lax.platform_dependent(
        x,
        kernel,
        bias,
        cpu=lambda *a: depthwise_conv(*a, stride, padding, "native"),
        default=lambda *a: depthwise_conv(*a, stride, padding, "selection"),
      )
  elif implementation == "native" and not native_available(x):
    raise ValueError(
      "native depthwise conv needs a 2D float32 input and the built kernels; got "
      f"x {x.shape} {x.dtype} ({native.unavailable_reason() or 'kernels built'})"
    )
  if implementation == "native":
    return _native_conv2d(x, kernel.astype(jnp.float32), bias.astype(jnp.float32), stride, padding)
  ndim = x.ndim - 2
  ksize = kernel.shape[:ndim]
  w = kernel.reshape(*ksize, kernel.shape[-1]).astype(x.dtype)
  sel = [
    _selection(
      x.shape[1 + d], (x.shape[1 + d] + 2 * padding - ksize[d]) // stride + 1, ksize[d], stride, padding, x.dtype
    )
    for d in range(ndim)
  ]
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
