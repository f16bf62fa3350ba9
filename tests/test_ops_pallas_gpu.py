"""The Pallas Triton (GPU) CPB-attention kernels: interpreted on CPU they equal `reference` in
values and all gradients; bf16 compute stays close to float32; the kernels lower for `cuda`
deviceless (the Triton lowering accepts their block shapes, dtypes and ops; no PTX is compiled)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smml_jax.ops import pallas_attention
from smml_jax.ops.attention import cpb_attention
from smml_jax.ops.pallas_attention_gpu import gpu_cpb_attention
from tests.test_ops_attention import _assert_same_values_and_gradients, _inputs
from tests.test_ops_pallas import _loss, _reference


def _gpu(block_q=16, **kw):
  return lambda *a: gpu_cpb_attention(*a, block_q=block_q, interpret=True, **kw)


@pytest.mark.parametrize(
  "b,heads_per_group,hidden,side,m,dropout",
  [
    # o = 2 heads per group, hidden widths 8 and 6 (padded to 16: the 8 -> 6 layer a padded
    # dot), 25 queries in two 16-query blocks (the second overhanging), 20 keys in two 16-key
    # blocks (12 padding keys), Dh = 4 padded to 16, attention dropout
    (2, 2, (8, 6), 5, 20, 0.25),
    # the original's MLP (2 -> 32 -> 32 -> 1), one 16-query block, 5 keys, no dropout
    (1, 1, (32, 32), 4, 5, 0.0),
  ],
)
def test_gpu_kernel_equals_reference_values_and_gradients(b, heads_per_group, hidden, side, m, dropout):
  q, k, v, pos_q, pos_k, params = _inputs(b=b, heads_per_group=heads_per_group, hidden=hidden, side=side, m=m)
  args = (q, k, v, pos_k, params, pos_q)
  # dropout with the key `reference` uses draws the same mask: equal values
  kw = dict(dropout_rate=dropout, dropout_rng=jax.random.PRNGKey(3) if dropout else None)
  want = _loss(_reference(**kw), with_pos_q=True)(*args)
  if dropout:
    assert not np.isclose(float(want[0]), float(_loss(_reference(), with_pos_q=True)(*args)[0]))
  _assert_same_values_and_gradients(_loss(_gpu(**kw), with_pos_q=True)(*args), want)


def test_gpu_kernel_bf16_compute_stays_close_to_float32():
  # the TPU kernel's test inputs and tolerances (both kernels round the same operands to bf16: on
  # other inputs their errors from float32 agree to 3 digits, and may exceed 3 %)
  q, k, v, pos_q, pos_k, params = _inputs(heads_per_group=1, hidden=(32, 32))
  bf = lambda t: t.astype(jnp.bfloat16)
  want = _loss(_reference())(q, k, v, pos_k, params, pos_q)
  got = _loss(_gpu(cpb_dtype=jnp.bfloat16))(bf(q), bf(k), bf(v), pos_k, params, pos_q)
  out16, mass16 = _gpu(cpb_dtype=jnp.bfloat16)(bf(q), bf(k), bf(v), pos_q, pos_k, params)
  out32, mass32 = _reference()(q, k, v, pos_q, pos_k, params)
  assert out16.dtype == jnp.bfloat16 and mass16.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out16, np.float32), out32, rtol=0.05, atol=0.03)
  np.testing.assert_allclose(mass16, mass32, rtol=0.03, atol=0.03)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.linalg.norm(a - b) <= 0.03 * np.linalg.norm(b) + 1e-3


def _lowered_for_cuda(b, g, n, m, dh, dtype, dropout):
  """The train-step gradient of the kernel, lowered for `cuda` on ShapeDtypeStructs: its text."""
  side = int(round(n**0.5))
  pos_q = jnp.zeros((side * side, 2))
  widths = (2, 32, 32, 1)

  def grads(q, k, v, pos_k, params, rng):
    def loss(q, k, v, pos_k, params):
      out, mass = gpu_cpb_attention(
        q, k, v, pos_q, pos_k, params, dropout_rate=0.1 if dropout else 0.0, dropout_rng=rng, cpb_dtype=dtype
      )
      return jnp.sum(out.astype(jnp.float32) ** 2) + jnp.sum(mass**2)

    return jax.grad(loss, argnums=(0, 1, 2, 3, 4))(q, k, v, pos_k, params)

  spec = jax.ShapeDtypeStruct
  params = [(spec((i, o), jnp.float32), spec((o,), jnp.float32)) for i, o in zip(widths[:-1], widths[1:])]
  args = (
    spec((b, g, side * side, dh), dtype),
    spec((b, g, m, dh), dtype),
    spec((b, g, m, dh), dtype),
    spec((b, g, m, 2), jnp.float32),
    params,
    jax.random.key_data(jax.random.PRNGKey(0)),
  )
  return jax.jit(grads).trace(*args).lower(lowering_platforms=("cuda",)).as_text()


@pytest.mark.parametrize(
  "shape,dtype",
  [
    (dict(b=1, g=2, n=36, m=20, dh=16), jnp.float32),
    (dict(b=1, g=2, n=36, m=20, dh=16), jnp.bfloat16),
    # the model's full shape: 50 x 50 queries, 12 x 12 sampled keys, 8 offset groups (~3 s)
    (dict(b=1, g=8, n=2500, m=144, dh=64), jnp.float32),
  ],
)
def test_gpu_kernels_lower_for_cuda_deviceless(shape, dtype):
  text = _lowered_for_cuda(**shape, dtype=dtype, dropout=True)
  # the forward and the backward kernel, as Triton custom calls (compiled to PTX only on a GPU)
  assert text.count("__gpu$xla.gpu.triton") == 2


def test_pallas_dispatch_routes_gpu_to_the_triton_kernels():
  assert pallas_attention.why_unavailable("gpu") is None
  assert pallas_attention.why_unavailable("cuda") is None
  assert "TPU" in pallas_attention.why_unavailable("cpu")
  q, k, v, pos_q, pos_k, params = _inputs(side=4)

  def fn(q, k, v, pos_k, params):
    return cpb_attention(q, k, v, pos_q, pos_k, params, implementation="pallas", platform="gpu")

  text = jax.jit(fn).trace(q, k, v, pos_k, params).lower(lowering_platforms=("cuda",)).as_text()
  assert text.count("__gpu$xla.gpu.triton") == 1 and "tpu_custom_call" not in text


def test_gpu_kernel_refuses_what_it_does_not_implement():
  q, k, v, pos_q, pos_k, params = _inputs()
  with pytest.raises(ValueError, match="float32"):
    gpu_cpb_attention(q, k, v, pos_q, pos_k, params, softmax_dtype=jnp.bfloat16)
  with pytest.raises(ValueError, match="hidden layer"):
    gpu_cpb_attention(q, k, v, pos_q, pos_k, params[-1:])
  with pytest.raises(ValueError, match="block_q.*power of two"):
    gpu_cpb_attention(q, k, v, pos_q, pos_k, params, block_q=24)
