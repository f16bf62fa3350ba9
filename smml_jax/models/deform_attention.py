"""Cross-modal deformable attention (2D on the patch grid, or 1D on the token sequence).

Queries come from `x_query` (the fused gene/histology tokens); an offset network on the grouped
queries predicts where to sample keys and values from `x_kv` (the histology tokens) on a
down-sampled lattice; an MLP on log-distances adds a continuous relative-position bias.
Follows the original (lucidrains' deformable-attention as used by Zhang et al.), see
`../shared/fixtures/reference/README.md` section 1 for the exact semantics reproduced here.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from smml_jax.models.init import torch_uniform
from smml_jax.models.layers import GroupedDense, TorchDense
from smml_jax.ops import dispatch, native, native_cpb, pallas_attention
from smml_jax.ops.attention import IMPLEMENTATIONS, cpb_attention
from smml_jax.ops.cpb import query_positions
from smml_jax.ops.depthwise import depthwise_conv
from smml_jax.ops.sampling import grid_sample_2d, linear_sample_1d


@dataclasses.dataclass(frozen=True)
class DeformAttentionConfig:
  """Hyper-parameters; the defaults are the original's 2D module (dim 128, 8 heads of 64)."""

  ndim: int = 2
  heads: int = 8
  dim_head: int = 64
  offset_groups: int = 8
  downsample: int = 4
  offset_kernel: int = 6
  offset_scale: float = 4.0
  group_queries: bool = True
  group_key_values: bool = True
  cpb_hidden: int = 32
  cpb_depth: int = 2
  dropout: float = 0.1
  cpb_geometry: str = "reference"  # or "consistent": see cpb.query_positions
  # or "native", "fused", "chunked", "reference", "pallas": ops/attention.py
  attention_impl: str = "auto"
  # Queries per attention tile; 0 sizes tiles to about `tile_pairs` (query, key) pairs of the
  # batch (at least 16 queries), which keeps a tile's (pairs, cpb_hidden) workspace cache-sized
  # (benchmarks/RESULTS.md: tile size against batch size).
  query_tile: int = 0
  tile_pairs: int = 73_728
  sampler: str = "auto"  # "gather", "matmul" or "auto" (by `platform`, ops/dispatch.py)
  # The platform the computation is compiled for ('cpu', 'gpu', 'tpu'): `attention_impl: auto`
  # and the depthwise conv choose by it (ops/dispatch.py); None: per lowering platform.
  platform: Optional[str] = None

  def cpb_widths(self) -> tuple[int, ...]:
    return (self.ndim,) + (self.cpb_hidden,) * self.cpb_depth + (self.heads // self.offset_groups,)

  def implementations(self, dtype=jnp.float32) -> tuple[str, str]:
    """(attention, depthwise conv) implementations that run on `platform` in compute `dtype`
    ("auto" where the platform is not known)."""
    native_ok = (
      self.attention_impl in ("auto", "native")
      and self.platform in (None, *dispatch.NATIVE_PLATFORMS)
      and native_cpb.supports_widths(self.cpb_widths(), dtype)
      and native.load()
    )
    attention = dispatch.resolve_attention(self.attention_impl, self.platform, native_supported=native_ok)
    return attention, dispatch.depthwise_for(attention) if self.ndim == 2 else "selection"

  def sampler_path(self) -> str:
    """The bilinear sampler that runs on `platform` ("gather" where the platform is not known)."""
    return dispatch.resolve_sampler(self.sampler, self.platform)

  def __post_init__(self):
    if self.attention_impl not in IMPLEMENTATIONS:
      raise ValueError(
        f"attention_impl: unknown attention implementation {self.attention_impl!r}; expected one of {IMPLEMENTATIONS}"
      )
    if self.sampler not in dispatch.SAMPLERS:
      raise ValueError(f"sampler: unknown sampler {self.sampler!r}; expected one of {dispatch.SAMPLERS}")

  def tile_for(self, rows: int, keys: int) -> int:
    """Queries per tile for `rows` = B * G offset-group rows attending to `keys` sampled keys
    (`pallas` tiles one row at a time in VMEM: its own default, not the CPU cache-sized one)."""
    if self.attention_impl == "pallas":
      return self.query_tile or pallas_attention.DEFAULT_QUERY_TILE
    return self.query_tile or max(16, self.tile_pairs // (rows * keys))

  @classmethod
  def original_1d(cls, **overrides) -> "DeformAttentionConfig":
    """The original's (unused by default) 1D module: 4 offset groups, ungrouped projections."""
    base = dict(ndim=1, offset_groups=4, group_queries=False, group_key_values=False)
    return cls(**{**base, **overrides})


def offset_grid_side(side: int, kernel: int, stride: int) -> int:
  """Output side of the offset conv (padding (kernel - stride) // 2 each side)."""
  pad = (kernel - stride) // 2
  return (side + 2 * pad - kernel) // stride + 1


def min_grid_side(kernel: int, stride: int) -> int:
  """The smallest token-grid side whose offset lattice has at least 2 points per side.

  Sampling points are normalised by (S - 1), S the lattice side: S = 1 divides by zero (NaN).
  """
  pad = (kernel - stride) // 2
  return kernel + stride - 2 * pad


class DeformCrossAttention(nn.Module):
  """Deformable cross-attention, channel-last.

  Call: (x_query (B, N, C), x_kv (B, N, C)) -> (out (B, N, C), grid, key_mass (B, H, M)).
  2D: N = side^2 tokens in row-major order; grid (B * G, 2, S, S) un-normalised, rows b * G + g,
  channel 0 = x (column), 1 = y (row), in offset-lattice cells; M = S^2.
  1D: grid (B * G, 1, S); M = S.
  """

  config: DeformAttentionConfig = DeformAttentionConfig()
  dtype: jnp.dtype = jnp.float32

  def _offsets(self, grouped_q: jax.Array) -> jax.Array:
    """grouped_q (B*G, *spatial, Cg) -> offsets (B*G, *lattice, ndim) after tanh * scale."""
    cfg = self.config
    cg = grouped_q.shape[-1]
    pad = (cfg.offset_kernel - cfg.downsample) // 2
    fan_in = cfg.offset_kernel**cfg.ndim
    kernel = self.param("offset_conv_kernel", torch_uniform(fan_in), (cfg.offset_kernel,) * cfg.ndim + (1, cg))
    bias = self.param("offset_conv_bias", torch_uniform(fan_in), (cg,))
    h = depthwise_conv(
      grouped_q.astype(self.dtype), kernel, bias, cfg.downsample, pad, cfg.implementations(self.dtype)[1], cfg.platform
    )
    h = nn.gelu(h, approximate=False)
    h = TorchDense(cfg.ndim, use_bias=False, dtype=self.dtype, name="offset_proj")(h)
    return jnp.tanh(h.astype(jnp.float32)) * cfg.offset_scale

  def _cpb_params(self):
    cfg = self.config
    widths = cfg.cpb_widths()
    params = []
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
      kernel = self.param(f"cpb_{i}_kernel", torch_uniform(fan_in), (fan_in, fan_out))
      bias = self.param(f"cpb_{i}_bias", torch_uniform(fan_in), (fan_out,))
      params.append((kernel, bias))
    return params

  @nn.compact
  def __call__(self, x_query: jax.Array, x_kv: jax.Array, *, train: bool = False):
    cfg = self.config
    chex.assert_rank([x_query, x_kv], 3)
    chex.assert_equal_shape([x_query, x_kv])
    b, n, c = x_query.shape
    g, h = cfg.offset_groups, cfg.heads
    if h % g or c % g:
      raise ValueError(f"heads={h} and channels={c} must be divisible by offset_groups={g}")
    inner = h * cfg.dim_head
    if cfg.ndim == 2:
      side = int(round(n**0.5))
      if side * side != n:
        raise ValueError(f"2D deformable attention needs a square token grid; got N={n}")
      spatial = (side, side)
    elif cfg.ndim == 1:
      spatial = (n,)
    else:
      raise ValueError(f"ndim must be 1 or 2, got {cfg.ndim}")

    q = GroupedDense(inner, g if cfg.group_queries else 1, self.dtype, name="to_q")(x_query)

    def group(t):  # (B, N, G * d) -> (B * G, *spatial, d), rows b * G + g
      t = t.reshape(b, *spatial, g, t.shape[-1] // g)
      t = jnp.moveaxis(t, -2, 1)
      return t.reshape(b * g, *spatial, t.shape[-1])

    offsets = self._offsets(group(q))  # (B*G, *lattice, ndim)
    lattice = offsets.shape[1:-1]
    s = lattice[0]
    if cfg.ndim == 2:
      oy, ox = jnp.meshgrid(jnp.arange(s, dtype=jnp.float32), jnp.arange(s, dtype=jnp.float32), indexing="ij")
      base = jnp.stack([ox, oy], axis=-1)  # x first, like the offsets' channels
    else:
      base = jnp.arange(s, dtype=jnp.float32)[:, None]
    vgrid = base + offsets  # (B*G, *lattice, ndim)
    vgrid_scaled = 2.0 * vgrid / (s - 1) - 1.0
    m = vgrid_scaled.size // (b * g * cfg.ndim)
    points = vgrid_scaled.reshape(b * g, m, cfg.ndim)

    kv_src = group(x_kv.astype(self.dtype))
    if cfg.ndim == 2:
      kv = grid_sample_2d(kv_src, points, cfg.sampler_path())  # (B*G, M, C/G)
    else:
      kv = linear_sample_1d(kv_src, points[..., 0], cfg.sampler_path())
    kv = kv.reshape(b, g, m, c // g).transpose(0, 2, 1, 3).reshape(b, m, c)
    kv_groups = g if cfg.group_key_values else 1
    k = GroupedDense(inner, kv_groups, self.dtype, name="to_k")(kv)
    v = GroupedDense(inner, kv_groups, self.dtype, name="to_v")(kv)

    q = q * cfg.dim_head**-0.5
    heads = lambda t: t.reshape(b, -1, h, cfg.dim_head).transpose(0, 2, 1, 3)
    pos_q = query_positions(spatial[0], cfg.ndim, cfg.cpb_geometry)
    pos_k = points.reshape(b, g, m, cfg.ndim)
    dropout_rng = self.make_rng("dropout") if train and cfg.dropout > 0 else None
    out, key_mass = cpb_attention(
      heads(q),
      heads(k),
      heads(v),
      pos_q,
      pos_k,
      self._cpb_params(),
      dropout_rate=cfg.dropout,
      dropout_rng=dropout_rng,
      implementation=cfg.attention_impl,
      query_tile=cfg.tile_for(b * g, m),
      cpb_dtype=self.dtype,
      platform=cfg.platform,
    )
    out = out.transpose(0, 2, 1, 3).reshape(b, n, inner)
    out = TorchDense(c, dtype=self.dtype, name="to_out")(out)
    grid = jnp.moveaxis(vgrid, -1, 1)  # (B*G, ndim, *lattice), the original's layout
    return out, grid, key_mass
