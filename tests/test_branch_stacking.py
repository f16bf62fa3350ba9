"""The two subspace branches as one vmapped computation (`subspace_net.fuse_subspaces`): chosen by
the attention path, the same function as two separate calls, one dropout key per branch."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_models import key, small_batch, small_config

from smml_jax.models.branch import SubspaceBranch
from smml_jax.models.registry import build_model, implementations
from smml_jax.models.subspace_net import SubspaceNet


def _branch_calls(fn):
  """(fn(), the names of the SubspaceBranch modules called: None for the detached stacked one)."""
  names = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, SubspaceBranch) and context.method_name == "__call__":
      names.append(context.module.name)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    value = fn()
  return value, names


@pytest.mark.parametrize(
  "attention,platform,stacked",
  [
    ("fused", None, True),
    ("chunked", None, True),
    ("reference", "tpu", True),
    ("auto", "tpu", True),  # fused on a TPU
    ("auto", None, False),  # native or fused, decided where it is lowered
    ("pallas", None, False),
  ],
)
def test_the_attention_path_decides_whether_the_branches_are_stacked(attention, platform, stacked):
  options = {"dim": 16, "heads": 2, "dim_head": 8, "offset_groups": 2, "cpb_hidden": 8, "snn_widths": [8, 16]}
  impl = {"attention_impl": attention, "platform": platform}
  spec = build_model(
    "subspace", num_classes=3, n_genes_tumour=5, n_genes_micro=6, feature_dim=8, options=options, impl=impl
  )
  assert spec.module.config.stacks_branches() is stacked
  assert implementations(spec)["branches"] == ("stacked" if stacked else "separate")
  single = build_model(
    "subspace-single", num_classes=3, n_genes_tumour=5, n_genes_micro=6, feature_dim=8, options=options, impl=impl
  )
  assert not single.module.config.stacks_branches() and implementations(single)["branches"] == "one"


def test_stacked_branches_equal_separate_calls_in_values_and_gradients():
  model = SubspaceNet(small_config(attention_impl="fused"))
  batch = small_batch()
  params = model.init(key(0), batch)["params"]

  def loss(p, separate):
    # Collecting the sown intermediates runs the branches one after the other.
    out = (
      model.apply({"params": p}, batch, mutable=["intermediates"])[0] if separate else model.apply({"params": p}, batch)
    )
    return jnp.sum(jnp.sin(out.logits)) + jnp.sum(out.grid_micro) * 1e-3, out

  value_and_grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
  ((_, stacked), grads), names = _branch_calls(lambda: value_and_grad(params, False))  # traced here
  assert names == [None]  # one detached branch, vmapped over the pair
  ((_, separate), grads_separate), names = _branch_calls(lambda: value_and_grad(params, True))
  assert names == ["branch_tumour", "branch_micro"]
  for field in dataclasses.fields(stacked):
    a, b = getattr(stacked, field.name), getattr(separate, field.name)
    if a is not None:
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=field.name)

  flat = jax.tree_util.tree_flatten_with_path(grads_separate)[0]
  overall = max(float(jnp.max(jnp.abs(b))) for _, b in flat)
  for (path, b), a in zip(flat, jax.tree.leaves(grads)):
    # The last CPB bias's gradient is zero in exact arithmetic (the softmax ignores a constant per
    # head): float noise there is measured against the gradients' overall scale.
    scale = max(float(jnp.max(jnp.abs(b))), 1e-3 * overall)
    assert float(jnp.max(jnp.abs(a - b))) / scale <= 1e-5, jax.tree_util.keystr(path)
  assert set(grads) >= {"branch_tumour", "branch_micro"}  # each branch's own gradient


def test_each_stacked_branch_draws_its_own_dropout_masks():
  """Identical branches (parameters and gene embeddings) agree in eval and differ under dropout
  only if the two branches' masks come from different keys."""
  cfg = small_config(attention_impl="fused")
  cfg = dataclasses.replace(cfg, snn_dropout=0.0)
  model = SubspaceNet(cfg)
  batch = small_batch()
  batch["genes_micro"] = batch["genes_tumour"]
  params = model.init(key(0), batch)["params"]
  params = {**params, "branch_micro": params["branch_tumour"], "snn_micro": params["snn_tumour"]}
  apply = jax.jit(model.apply, static_argnames="train")
  out = apply({"params": params}, batch)
  np.testing.assert_allclose(out.embed_tumour, out.embed_micro, rtol=1e-6, atol=1e-7)
  train = apply({"params": params}, batch, train=True, rngs={"dropout": key(1)})
  assert float(jnp.max(jnp.abs(train.embed_tumour - train.embed_micro))) > 0
