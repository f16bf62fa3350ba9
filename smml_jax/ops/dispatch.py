"""Which implementation of the attention and the depthwise conv runs, by the platform the
computation is compiled for.

The host's `jax.default_backend()` says nothing about where a computation runs: a CPU host
compiles for a TPU topology ahead of time, and a mesh may hold devices of another platform than
the default one. So the trainer and the benchmarks pass the platform of their mesh's devices
(`platform_of`); code that passes none gets `auto` resolved per lowering platform by
`jax.lax.platform_dependent` (the C++ kernels on the CPU, XLA elsewhere).

One choice governs both ops: the native attention runs the native depthwise conv, every other
attention path the XLA (selection-matmul) conv. The bilinear sampler is chosen by the platform too
(`resolve_sampler`).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

ATTENTION_IMPLEMENTATIONS = ("auto", "reference", "chunked", "fused", "native", "pallas")
# What `auto` runs on a GPU or TPU. Stays "fused". TPU: the Pallas kernel (MXU-packed, run per
# shard under the trainer's mesh) is estimated faster than fused on v5e and uses 42-55 % less
# temporary memory, but it has never run on a TPU and its float32 train step compiles ~4x slower
# (benchmarks/RESULTS_pallas.md). GPU: the Triton kernels (`pallas_attention_gpu`) have never been
# compiled to PTX or timed (benchmarks/gpu_check.sh measures them). The one place to switch.
ACCELERATOR_ATTENTION = "fused"
NATIVE_PLATFORMS = ("cpu",)
# Attention paths written in jax.numpy only: `jax.vmap` batches them into one computation (the
# native path's custom calls would run once per batch element, the Pallas kernels are per shard).
BATCHABLE_ATTENTION = ("reference", "chunked", "fused")

SAMPLERS = ("auto", "gather", "matmul")
# What `sampler: auto` runs per platform; "gather" elsewhere and where the platform is not known.
# TPU: the matmul sampler. The TPU backend compiles its two small contractions in a fraction of the
# time it spends on the gathers (benchmarks/RESULTS.md, "v5e compile time, session 8"). At the TPU's
# default matmul precision it multiplies the sampled features in bf16, as the key and value
# projections that consume them do anyway.
PLATFORM_SAMPLER = {"tpu": "matmul"}


class DispatchError(ValueError):
  """An implementation that cannot run on the platform the computation is compiled for."""


def platform_of(devices) -> str:
  """The platform ('cpu', 'gpu', 'tpu') of a mesh's or a device list's devices (one platform)."""
  devices = getattr(devices, "devices", devices)  # a Mesh
  platforms = {d.platform for d in np.asarray(devices).reshape(-1)}
  if len(platforms) != 1:
    raise DispatchError(f"a mesh over devices of one platform is needed, got {sorted(platforms)}")
  return platforms.pop()


def resolve_attention(implementation: str, platform: Optional[str], *, native_supported: bool) -> str:
  """The attention implementation that runs.

  Args:
    implementation: one of ATTENTION_IMPLEMENTATIONS.
    platform: the platform the computation is compiled for; None: not known here (then `auto`
      stays `auto` and is resolved per lowering platform).
    native_supported: the native kernels implement this MLP in this dtype and are built.

  Returns:
    A concrete implementation, or "auto" when `platform` is None.
  """
  if implementation not in ATTENTION_IMPLEMENTATIONS:
    raise DispatchError(
      f"unknown attention implementation {implementation!r}; expected one of {ATTENTION_IMPLEMENTATIONS}"
    )
  if implementation == "native" and platform is not None and platform not in NATIVE_PLATFORMS:
    raise DispatchError(
      f"attention implementation 'native' runs on the CPU only; this "
      f"computation is compiled for {platform!r} devices (use 'auto' or "
      f"{ACCELERATOR_ATTENTION!r})"
    )
  if implementation != "auto" or platform is None:
    return implementation
  if platform in NATIVE_PLATFORMS:
    return "native" if native_supported else "fused"
  return ACCELERATOR_ATTENTION


def resolve_sampler(sampler: str, platform: Optional[str]) -> str:
  """The bilinear sampler that runs ("gather" or "matmul") for `sampler` on `platform`."""
  if sampler not in SAMPLERS:
    raise DispatchError(f"unknown sampler {sampler!r}; expected one of {SAMPLERS}")
  if sampler != "auto":
    return sampler
  return PLATFORM_SAMPLER.get(platform, "gather")


def depthwise_for(attention: str) -> str:
  """The depthwise conv implementation that goes with an attention implementation."""
  if attention in ("auto", "native"):
    return attention
  return "selection"
