"""CPB attention as Pallas Triton kernels for GPUs: the bias MLP evaluated inside the attention block.

The GPU counterpart of `pallas_attention` (the TPU / Mosaic kernels), the same function and
signature: one program per (batch row, offset group, block of BLOCK_Q queries) against all M
sampled keys of its group, the MLP on BLOCK_Q x BLOCK_K pairs in registers
(`pallas_attention_gpu_kernels`, `pallas_attention_gpu_mlp`). The backward pass
(`jax.custom_vjp`, its own pallas_call) recomputes the bias and the MLP activations from the
inputs; sums over query blocks are per-program partials reduced here.

Triton tensors are powers of two: Dh is zero-padded to a power of two >= 16 and M to a multiple
of BLOCK_K (the padding keys masked out of the softmax), hidden widths as in `pack_layers`; all
padding is sliced away, so autodiff of the padding maps the gradients back.

Dropout uses the mask `reference` draws (bernoulli over the (B, H, N, M) probabilities), as the
TPU kernels, so the kernel equals `reference` in value for one key.

Checked on a CPU host only: Pallas' interpreter (values and gradients) and the Triton lowering
for `cuda` (block shapes, dtypes and ops accepted); no PTX has been compiled or run on a GPU.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

from smml_jax.ops import pallas_attention_gpu_kernels as kernels
from smml_jax.ops import pallas_attention_gpu_mlp as mlp
from smml_jax.ops import pallas_common as common
from smml_jax.ops.cpb import CPBParams

BLOCK_Q = 32  # queries per program: 32 x 16 pairs x 32 hidden units in registers per key block


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9, 10, 11, 12))
def _attention(qg, kg, vg, posqt, poskt, keep, w_mats, n, m, block_q, dropout_rate, cpb_dtype, interpret):
  out, mass = kernels.forward_call(
    qg,
    kg,
    vg,
    posqt,
    poskt,
    keep,
    w_mats,
    n=n,
    m=m,
    block_q=block_q,
    dropout_rate=dropout_rate,
    cpb_dtype=cpb_dtype,
    interpret=interpret,
  )
  return out, mass.sum(axis=2)


def _attention_fwd(qg, kg, vg, posqt, poskt, keep, w_mats, n, m, block_q, dropout_rate, cpb_dtype, interpret):
  values = [x.value for x in (qg, kg, vg, posqt, poskt)]
  keep_value = None if keep is None else keep.value
  w_values = [x.value for x in w_mats]
  outputs = _attention.fun(*values, keep_value, w_values, n, m, block_q, dropout_rate, cpb_dtype, interpret)
  # pos_q is a constant lattice in the model: its gradient is computed only when asked for.
  return outputs, (values, keep_value, w_values, posqt.perturbed)


def _attention_bwd(n, m, block_q, dropout_rate, cpb_dtype, interpret, residuals, cotangents):
  values, keep, w_mats, with_posq = residuals
  qg, kg, vg, posqt, poskt = values
  g_out = common.materialise(cotangents[0], qg.shape, vg.dtype).astype(vg.dtype)
  g_mass = common.materialise(cotangents[1], kg.shape[:4], jnp.float32).astype(jnp.float32)
  grads = kernels.backward_call(
    qg,
    kg,
    vg,
    posqt,
    poskt,
    keep,
    w_mats,
    g_out,
    g_mass,
    n=n,
    m=m,
    block_q=block_q,
    dropout_rate=dropout_rate,
    cpb_dtype=cpb_dtype,
    with_posq=with_posq,
    interpret=interpret,
  )
  g_q, g_k, g_v, g_poskt = grads[0], *(g.sum(axis=2) for g in grads[1:4])
  g_w = [g.sum(axis=(0, 1, 2)).astype(w.dtype) for g, w in zip(grads[4 : 4 + len(w_mats)], w_mats)]
  g_posqt = grads[-1].sum(axis=(0, 1)) if with_posq else jnp.zeros(posqt.shape, posqt.dtype)
  return (
    g_q.astype(qg.dtype),
    g_k.astype(kg.dtype),
    g_v.astype(vg.dtype),
    g_posqt.astype(posqt.dtype),
    g_poskt.astype(poskt.dtype),
    None,
    g_w,
  )


_attention.defvjp(_attention_fwd, _attention_bwd, symbolic_zeros=True)


def gpu_cpb_attention(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  pos_q: jax.Array,
  pos_k: jax.Array,
  cpb_params: CPBParams,
  *,
  dropout_rate: float = 0.0,
  dropout_rng: Optional[jax.Array] = None,
  block_q: int = BLOCK_Q,
  softmax_dtype=jnp.float32,
  cpb_dtype=jnp.float32,
  interpret: bool = False,
) -> tuple[jax.Array, jax.Array]:
  """softmax(q k^T + CPB(pos_q - pos_k)) v and the key mass, as `ops.attention.cpb_attention`.

  Args:
    q: (B, H, N, Dh) scaled queries; k, v: (B, H, M, Dh); H = G * o.
    pos_q: (N, D) query positions; pos_k: (B, G, M, D) sampled key positions.
    cpb_params: CPB MLP, at least one hidden layer, last layer with o outputs.
    dropout_rate, dropout_rng: attention dropout (the mask `reference` draws); None disables it.
    block_q: queries per program, a power of two >= 16.
    softmax_dtype: must be float32 (the kernel's logits and probabilities are float32).
    cpb_dtype: dtype of the MLP's hidden matmul inputs (float32 or bfloat16); accumulation float32.
    interpret: run in Pallas' interpreter (any backend) instead of the Triton lowering.

  Returns:
    out (B, H, N, Dh) in v's dtype and the attention mass per key (B, H, M) float32, pre-dropout.
  """
  common.check_arguments(q, pos_k, cpb_params, softmax_dtype)
  if block_q < mlp.MIN_DOT or block_q & (block_q - 1):
    raise ValueError(f"block_q must be a power of two >= {mlp.MIN_DOT} (a Triton block); got {block_q}")
  b, h, n, dh = q.shape
  groups, m = pos_k.shape[1:3]
  heads = h // groups
  dhp, mp = mlp.padded_width(dh), common.round_up(m, kernels.BLOCK_K)
  qg = jnp.pad(q, ((0, 0),) * 3 + ((0, dhp - dh),)).reshape(b, groups, heads, n, dhp)
  kg, vg = (jnp.pad(t, ((0, 0), (0, 0), (0, mp - m), (0, dhp - dh))).reshape(b, groups, heads, mp, dhp) for t in (k, v))
  posqt = pos_q.astype(jnp.float32).T
  poskt = jnp.pad(jnp.swapaxes(pos_k.astype(jnp.float32), 2, 3), ((0, 0), (0, 0), (0, 0), (0, mp - m)))
  keep = None
  if dropout_rng is not None and dropout_rate > 0.0:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, (b, h, n, m))
    keep = jnp.pad(keep.reshape(b, groups, heads, n, m).astype(jnp.int8), ((0, 0),) * 4 + ((0, mp - m),))
  else:
    dropout_rate = 0.0
  w_mats = mlp.pack_layers(cpb_params, cpb_dtype)
  out, mass = _attention(
    qg, kg, vg, posqt, poskt, keep, w_mats, n, m, block_q, float(dropout_rate), jnp.dtype(cpb_dtype), interpret
  )
  return out[..., :dh].reshape(b, h, n, dh), mass[..., :m].reshape(b, h, m)
