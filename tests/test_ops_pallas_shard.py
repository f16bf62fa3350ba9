"""The Pallas CPB attention traced under a mesh runs per shard in `jax.shard_map` (Mosaic kernels
cannot be partitioned by GSPMD): on 2 host devices, interpreted, it equals the unsharded call in
values and all gradients, the replicated CPB weights' and query positions' summed over shards.

XLA_FLAGS must be set before jax is imported, so the comparison runs in a subprocess."""

import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]

SCRIPT = r"""
import jax, jax.numpy as jnp, numpy as np, pytest
from jax.sharding import NamedSharding, PartitionSpec as P
from smml_jax.ops.attention import cpb_attention
from smml_jax.train import sharding
from tests.test_ops_attention import _assert_same_values_and_gradients, _inputs

assert jax.device_count() == 2, jax.devices()
mesh = sharding.make_mesh()
q, k, v, pos_q, pos_k, params = _inputs(b=4, side=5, m=5)
rng = jax.random.PRNGKey(3)

def loss(q, k, v, pos_k, params, pos_q):
  out, mass = cpb_attention(
    q, k, v, pos_q, pos_k, params, implementation="pallas", query_tile=128, dropout_rate=0.25, dropout_rng=rng
  )
  return jnp.sum(jnp.sin(out)) + jnp.sum(mass**2)

grads = jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4, 5))

def under_mesh(*args):
  with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
    return grads(*args)

args = (q, k, v, pos_k, params, pos_q)
batch, rep = sharding.batch_sharding(mesh), sharding.replicated(mesh)
sharded = (*(jax.device_put(x, batch) for x in (q, k, v, pos_k)), jax.device_put(params, rep), pos_q)
assert "shard_map" in str(jax.make_jaxpr(under_mesh)(*sharded))
assert "shard_map" not in str(jax.make_jaxpr(grads)(*args))  # no mesh: the unsharded call
got = jax.jit(under_mesh)(*sharded)
_assert_same_values_and_gradients(got, jax.jit(grads)(*args))

odd = _inputs(b=3, side=5, m=5)
with pytest.raises(ValueError, match="batch of 3 .* 2 shards of the mesh axes \\('data',\\)"):
  jax.eval_shape(under_mesh, *odd[:3], odd[4], odd[5], odd[3])
print("ok")
"""


def test_pallas_under_a_mesh_runs_per_shard_and_equals_the_unsharded_call():
  env = {
    **os.environ,
    "JAX_PLATFORMS": "cpu",
    "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]),
    "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
  }
  proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=REPO, timeout=300, capture_output=True, text=True)
  assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout[-2000:] + proc.stderr[-4000:]
