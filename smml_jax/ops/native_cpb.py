"""The relative-position bias through the native CPU kernels (`ops/native/cpb_mlp.cc`).

Same function as `cpb.relative_position_bias` for the original's MLP shape, D -> W -> W -> 1 with
ReLUs, W in {8, 16, 24, 32}, in float32. The forward kernel keeps one bit per unit of the second
hidden layer (one uint32 per pair) for the backward kernel, which recomputes the distances and the
first layer; nothing of size (pairs, W), not even the distances (pairs, D), is written to memory.

Hidden units whose float32 pre-activation is within rounding of zero (~1e-5 of the pairs' units)
are decided by a float64 evaluation of the pair, so the ReLU masks, and with them the gradients,
are those of the float64 function (`tests/test_cpb_numerics.py`: within 1e-5 of its largest
entry even at units placed on their kink, where XLA's float32 paths are ~2e-2 off).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from smml_jax.ops import native
from smml_jax.ops.cpb import CPBParams

WIDTHS = (8, 16, 24, 32)


def supports(params: CPBParams, dtype) -> bool:
  """True when the kernels implement this MLP in this compute dtype."""
  if len(params) != 3:
    return False
  (w1, _), (w2, _), (w3, _) = params
  return (
    w2.shape == (w1.shape[1],) * 2
    and w3.shape[0] == w1.shape[1]
    and supports_widths((w1.shape[0], w1.shape[1], w2.shape[1], w3.shape[1]), dtype)
  )


def supports_widths(widths, dtype) -> bool:
  """`supports` for an MLP of layer widths (D, W, W, 1), from its shape alone."""
  return (
    jnp.dtype(dtype) == jnp.float32
    and len(widths) == 4
    and 1 <= widths[0] <= 4
    and widths[1] in WIDTHS
    and widths[2] == widths[1]
    and widths[3] == 1
  )


def available(params: CPBParams, dtype) -> bool:
  """True when the kernels are built for this machine and implement this MLP. They run on the CPU
  only: which platform a computation runs on is `ops/dispatch.py`'s question, not the host's."""
  return supports(params, dtype) and native.load()


def why_unavailable(params: CPBParams, dtype) -> str:
  """The reason `available` is False, for error messages."""
  if not supports(params, dtype):
    shapes = [tuple(k.shape) for k, _ in params]
    return (
      f"the native kernels implement a D -> W -> W -> 1 MLP (W in {WIDTHS}, D <= 4) in "
      f"float32; got layer kernels {shapes} in {jnp.dtype(dtype).name}"
    )
  native.load()
  return f"the native kernels could not be built: {native.unavailable_reason()}"


def _flat(params: CPBParams) -> list[jax.Array]:
  return [a.astype(jnp.float32) for layer in params for a in layer]


def _require(params: CPBParams) -> None:
  """Builds and registers the kernels (at trace time), or says why they cannot run."""
  if not available(params, jnp.float32):
    raise ValueError("native CPB kernels unavailable: " + why_unavailable(params, jnp.float32))


def _kernel_inputs(pos_q, pos_k, params) -> list[jax.Array]:
  """pos_q (T, D), pos_k as (B * G, M, D) and the six weight arrays, float32."""
  b, g, m, d = pos_k.shape
  return [pos_q.astype(jnp.float32), pos_k.reshape(b * g, m, d).astype(jnp.float32), *_flat(params)]


@jax.custom_vjp
def relative_position_bias(pos_q: jax.Array, pos_k: jax.Array, params: CPBParams) -> jax.Array:
  """`cpb.relative_position_bias` in float32 through the native kernels.

  Args:
    pos_q: (T, D) query positions.
    pos_k: (B, G, M, D) sampled key positions.
    params: the CPB MLP, D -> W -> W -> 1 (`supports` must hold).

  Returns:
    (B, G, T, M) float32 bias, one head per offset group.
  """
  return _bias_fwd(pos_q, pos_k, params)[0]


def _bias_fwd(pos_q, pos_k, params):
  _require(params)
  b, g, m, _ = pos_k.shape
  shape = (b * g, pos_q.shape[0], m)
  bias, bits = jax.ffi.ffi_call(
    native.FORWARD_TARGET,
    (jax.ShapeDtypeStruct(shape, jnp.float32), jax.ShapeDtypeStruct(shape, jnp.uint32)),
    vmap_method="sequential",
  )(*_kernel_inputs(pos_q, pos_k, params))
  return bias.reshape(b, g, *shape[1:]), (pos_q, pos_k, params, bits)


def _bias_bwd(residuals, g_bias):
  pos_q, pos_k, params, bits = residuals
  inputs = _kernel_inputs(pos_q, pos_k, params)
  shapes = [jax.ShapeDtypeStruct(a.shape, jnp.float32) for a in inputs]
  g_pos_q, g_pos_k, *g_flat = jax.ffi.ffi_call(native.BACKWARD_TARGET, shapes, vmap_method="sequential")(
    *inputs, bits, g_bias.reshape(bits.shape).astype(jnp.float32)
  )
  g_params = [(g_flat[2 * i].astype(k.dtype), g_flat[2 * i + 1].astype(bb.dtype)) for i, (k, bb) in enumerate(params)]
  g_params = type(params)(g_params) if isinstance(params, (list, tuple)) else g_params
  return (g_pos_q.astype(pos_q.dtype), g_pos_k.reshape(pos_k.shape).astype(pos_k.dtype), g_params)


relative_position_bias.defvjp(_bias_fwd, _bias_bwd)
