"""CPB attention as Pallas kernels: the bias MLP evaluated inside the attention tile.

One grid step handles one (batch row, offset group, tile of T queries) against all M sampled keys
of that group (M is small: 144 on the original's 50 x 50 grid), so the softmax needs no online
rescaling. The tile is transposed, keys on sublanes and queries on lanes
(`pallas_attention_kernels`), and the CPB MLP runs lane-major on R keys x T queries at a time,
pairs along lanes and hidden units on sublanes, `mxu_pack` lane slices of pairs stacked against
a block-diagonal kron(I, W^T) so a pass of the MXU carries several slices
(`pallas_attention_mlp`); the (pairs, hidden) activations never reach HBM.

The backward pass (`jax.custom_vjp`, its own pallas_call) keeps nothing from the forward one but
the inputs: it recomputes the bias (keeping the tile's packed hidden activations in VMEM when
they fit `HIDDEN_VMEM_BYTES`) and the probabilities, runs the attention backward, then the MLP
backward, accumulating the weight gradients, dk, dv and d pos_k over the query tiles of a
(batch row, group) in resident output blocks.

Dropout uses the mask `reference` draws (bernoulli over the (B, H, N, M) probabilities), passed
transposed as int8, so the kernel equals `reference` in law and, for one key, in value.

Under a mesh (the trainer traces its GSPMD-partitioned step under its mesh,
`train.steps.under_mesh`) the TPU kernels run per shard in a `jax.shard_map` over the batch
(`_per_shard`): Mosaic kernels cannot be partitioned automatically.

Targets: TPU (Mosaic); on CUDA GPUs the Triton kernels of `pallas_attention_gpu` (same function,
chosen at lowering). Anywhere else the TPU kernels run in Pallas' interpreter (`interpret`), which
is how CPU tests check them; see `why_unavailable`.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from smml_jax.ops import pallas_attention_gpu, pallas_attention_kernels as kernels
from smml_jax.ops import pallas_attention_mlp as mlp
from smml_jax.ops import pallas_common as common
from smml_jax.ops.cpb import CPBParams

DEFAULT_QUERY_TILE = 256
TILE_MULTIPLE = 128  # queries lie on lanes: a tile is a multiple of 128 (or all N queries)
# VMEM for the backward kernel's hidden activations (4.7 MB per hidden layer at the full shape
# in float32, 256-query tiles): under v5e's 16 MiB default scoped VMEM with the tile's other
# buffers; past it the backward recomputes them.
HIDDEN_VMEM_BYTES = 10 * 2**20
PLATFORMS = ("tpu", "gpu", "cuda")  # platforms with a compiled kernel; others only interpret


def why_unavailable(platform: str) -> Optional[str]:
  """None when `pallas` compiles for `platform` ("tpu", "gpu", "cpu"), else the reason."""
  if platform in PLATFORMS:
    return None
  if platform == "rocm":
    return "the Pallas CPB-attention GPU kernel is lowered and checked for CUDA only: use 'fused' on ROCm"
  return (
    f"the Pallas CPB-attention kernel compiles for TPU and CUDA GPUs only, not {platform!r}; on CPU "
    "it runs in Pallas' interpreter (slow, for tests) and 'native' or 'fused' should be used"
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def _attention(qg, kg, vg, posqt, posk, keep_t, w_mats, cfg):
  return kernels.forward_call(qg, kg, vg, posqt, posk, keep_t, w_mats, cfg)


def _attention_fwd(qg, kg, vg, posqt, posk, keep_t, w_mats, cfg):
  values = [x.value for x in (qg, kg, vg, posqt, posk)]
  keep_value = None if keep_t is None else keep_t.value
  w_values = [x.value for x in w_mats]
  outputs = kernels.forward_call(*values, keep_value, w_values, cfg)
  # pos_q is a constant lattice in the model: its gradient is computed only when something
  # differentiates through it.
  with_posq = () if posqt.perturbed else None
  return outputs, (values, keep_value, w_values, with_posq)


def _attention_bwd(cfg, residuals, cotangents):
  values, keep_t, w_mats, with_posq = residuals
  qg, kg, vg, posqt, posk = values
  g_out = common.materialise(cotangents[0], qg.shape, vg.dtype)
  g_mass = common.materialise(cotangents[1], kg.shape[:4], jnp.float32)
  grads = kernels.backward_call(
    qg,
    kg,
    vg,
    posqt,
    posk,
    keep_t,
    w_mats,
    g_out.astype(vg.dtype),
    g_mass.astype(jnp.float32)[..., None],
    cfg,
    with_posq=with_posq is not None,
  )
  g_q, g_k, g_v, g_posk = grads[:4]
  # in `pack_layers`' layout: its autodiff folds the packed blocks back onto the MLP's weights
  g_w = [g.sum(axis=(0, 1)).astype(w.dtype) for g, w in zip(grads[4 : 4 + len(w_mats)], w_mats)]
  if with_posq is not None:
    g_posqt = grads[-1].sum(axis=(0, 1))
  else:
    g_posqt = jnp.zeros(posqt.shape, posqt.dtype)
  return (
    g_q.astype(qg.dtype),
    g_k.astype(kg.dtype),
    g_v.astype(vg.dtype),
    g_posqt.astype(posqt.dtype),
    g_posk.astype(posk.dtype),
    None,
    g_w,
  )


_attention.defvjp(_attention_fwd, _attention_bwd, symbolic_zeros=True)


def mlp_widths(cpb_params: CPBParams) -> tuple[int, ...]:
  """(D, w1, ..., o) of a CPB MLP."""
  return tuple(int(w.shape[0]) for w, _ in cpb_params) + (int(cpb_params[-1][0].shape[1]),)


def keeps_hidden(widths, pack: int, m: int, tile: int, cpb_dtype) -> bool:
  """Whether the backward kernel keeps its tile's hidden activations in VMEM (else recomputes)."""
  return mlp.hidden_scratch_bytes(widths, pack, m, tile, cpb_dtype) <= HIDDEN_VMEM_BYTES


def query_tile_for(query_tile: int, n: int) -> int:
  """Queries per grid step: `query_tile` rounded up to a multiple of 128 (queries lie on lanes),
  or all N queries when that covers them."""
  tile = common.round_up(max(query_tile, 1), TILE_MULTIPLE)
  return n if tile >= n else tile


def _per_shard(call, batch: int):
  """`call` on (qg, kg, vg, posqt, posk, keep_t, w_mats), in a `jax.shard_map` over the batch
  when traced under a mesh (`jax.sharding.use_abstract_mesh` / `jax.set_mesh`, as the trainer's
  step is), since GSPMD cannot partition a Mosaic kernel. The batch splits over the mesh's axes
  not already manual; pos_q and the MLP stay replicated, shard_map's transpose summing their
  gradients over the shards. The dropout mask is drawn before, for the whole batch, so the
  sharded call equals the unsharded one."""
  mesh = jax.sharding.get_abstract_mesh()
  axes = tuple(a for a, t in zip(mesh.axis_names, mesh.axis_types) if t != jax.sharding.AxisType.Manual)
  shards = math.prod(mesh.shape[a] for a in axes)
  if shards == 1:
    return call
  if batch % shards:
    raise ValueError(
      f"pallas CPB attention under a mesh: a batch of {batch} does not split into the {shards} shards "
      f"of the mesh axes {axes} (the kernel runs per shard); use a batch that is a multiple of {shards}"
    )
  rows, rep = PartitionSpec(axes), PartitionSpec()
  # check_vma=False: pallas_call has no varying-manual-axes rule.
  return jax.shard_map(
    call,
    mesh=mesh,
    in_specs=(rows, rows, rows, rep, rows, rows, rep),
    out_specs=(rows, rows),
    axis_names=frozenset(axes),
    check_vma=False,
  )


def pallas_cpb_attention(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  pos_q: jax.Array,
  pos_k: jax.Array,
  cpb_params: CPBParams,
  *,
  dropout_rate: float = 0.0,
  dropout_rng: Optional[jax.Array] = None,
  query_tile: int = DEFAULT_QUERY_TILE,
  softmax_dtype=jnp.float32,
  cpb_dtype=jnp.float32,
  interpret: Optional[bool] = None,
  exact: Optional[bool] = None,
  mxu_pack: int = mlp.DEFAULT_PACK,
) -> tuple[jax.Array, jax.Array]:
  """softmax(q k^T + CPB(pos_q - pos_k)) v and the key mass, as `ops.attention.cpb_attention`.

  Args:
    q: (B, H, N, Dh) scaled queries; k, v: (B, H, M, Dh); H = G * o.
    pos_q: (N, D) query positions; pos_k: (B, G, M, D) sampled key positions.
    cpb_params: CPB MLP, at least one hidden layer, last layer with o outputs.
    dropout_rate, dropout_rng: attention dropout (the mask `reference` draws); None disables it.
    query_tile: queries per TPU grid step, rounded up to a multiple of 128 (`query_tile_for`);
      the GPU kernels use their own register blocks (`pallas_attention_gpu.BLOCK_Q`).
    softmax_dtype: must be float32 (the kernel's logits and probabilities are float32).
    cpb_dtype: dtype of the MLP's matmul inputs (float32 or bfloat16); accumulation is float32.
    interpret: run in Pallas' interpreter (any backend); None: compiled on TPU, the Triton
      kernels (`pallas_attention_gpu`) on CUDA, interpreted elsewhere (chosen at lowering, by
      the platform the computation is compiled for).
    exact: float32 matmul operands at `Precision.HIGHEST` (several MXU passes on a TPU); False:
      rounded to bfloat16 for one pass, as XLA's default precision treats float32 dots on a TPU
      (`fused` there). None: the platform's default, chosen with `interpret`: one pass when
      compiled for TPU, HIGHEST when interpreted (where the parity tests hold it to 1e-5).
      bfloat16 operands (`cpb_dtype`, q, k, v in bfloat16) take one pass either way.
    mxu_pack: the bias MLP's hidden layers are evaluated for this many lane slices of pairs at
      once, as kron(I_pack, W^T) (`pallas_attention_mlp`): MXU side / hidden width, 4 for the
      original's 32 units on a 128 x 128 MXU (v5e, v5p; `pallas_attention_mlp.pack_for`), 8 on
      v6e's 256 x 256. Reduced to divide the pairs of an MLP step. TPU kernels only.

  Returns:
    out (B, H, N, Dh) in v's dtype and the attention mass per key (B, H, M) float32, pre-dropout.
  """
  common.check_arguments(q, pos_k, cpb_params, softmax_dtype)
  b, h, n, dh = q.shape
  groups, m = pos_k.shape[1:3]
  heads = h // groups
  tile = query_tile_for(query_tile, n)
  qg = q.reshape(b, groups, heads, n, dh)
  kg, vg = (t.reshape(b, groups, heads, m, dh) for t in (k, v))
  posqt = pos_q.astype(jnp.float32).T
  posk = pos_k.astype(jnp.float32)
  keep_t = None
  if dropout_rng is not None and dropout_rate > 0.0:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, (b, h, n, m))
    keep_t = jnp.swapaxes(keep.reshape(b, groups, heads, n, m), 3, 4).astype(jnp.int8)
  else:
    dropout_rate = 0.0
  if mxu_pack < 1:
    raise ValueError(f"mxu_pack must be a positive integer (MXU side / hidden width); got {mxu_pack}")
  pack = mlp.packing(mxu_pack, mlp.key_steps(m)[0], tile)
  w_mats = mlp.pack_layers(cpb_params, cpb_dtype, pack)
  keep_hidden = keeps_hidden(mlp_widths(cpb_params), pack, m, tile, cpb_dtype)
  cfg = lambda interpret, exact: kernels.Config(
    n, tile, float(dropout_rate), jnp.dtype(cpb_dtype), pack, keep_hidden, exact, interpret
  )
  args = (qg, kg, vg, posqt, posk, keep_t, w_mats)
  if interpret is None:
    compiled, interpreted = cfg(False, bool(exact)), cfg(True, exact is None or exact)
    tpu = _per_shard(
      lambda *a: jax.lax.platform_dependent(
        *a, tpu=lambda *a: _attention(*a, compiled), default=lambda *a: _attention(*a, interpreted)
      ),
      b,
    )
    gpu = lambda *_: pallas_attention_gpu.gpu_cpb_attention(
      q, k, v, pos_q, pos_k, cpb_params, dropout_rate=dropout_rate, dropout_rng=dropout_rng, cpb_dtype=cpb_dtype
    )
    out, mass = jax.lax.platform_dependent(
      *args, cuda=lambda *a: tuple(x.reshape(y.shape) for x, y in zip(gpu(), (qg, kg[..., 0]))), default=tpu
    )
  else:
    call = lambda *a: _attention(*a, cfg(interpret, bool(interpret) if exact is None else exact))
    out, mass = _per_shard(call, b)(*args)
  out = out.reshape(b, h, n, dh)
  return out, mass.reshape(b, h, m)
