"""Optimiser factory: the original's Adam (coupled L2), per-epoch cosine, masks."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import load_fixture
from smml_jax.models.modalities import subspace_logits
from smml_jax.optim.coordination import ModalitySplit, coordinate_gradients
from smml_jax.optim.factory import OptimConfig, epoch_schedule, make_optimizer, trainable_mask_from_predicate
from smml_jax.tasks import get_task


def _classifier(fx, grad_weight_key):
  params = {
    "classifier": {
      "kernel": jnp.asarray(fx["param/classifier.weight"].T),
      "bias": jnp.asarray(fx["param/classifier.bias"]),
    }
  }
  grads = {
    "classifier": {"kernel": jnp.asarray(fx[grad_weight_key].T), "bias": jnp.asarray(fx["grad/classifier.bias"])}
  }
  return params, grads


def _check_step(fx, new_params):
  np.testing.assert_allclose(
    new_params["classifier"]["kernel"].T, fx["adam/classifier.weight_after_step"], rtol=1e-5, atol=1e-6
  )
  np.testing.assert_allclose(
    new_params["classifier"]["bias"], fx["adam/classifier.bias_after_step"], rtol=1e-5, atol=1e-6
  )


@pytest.mark.parity
def test_parity_one_adam_step_on_the_classifier():
  fx = load_fixture("deform_pathomic_net.npz")
  config = OptimConfig()  # the defaults are the original's
  assert config.learning_rate == pytest.approx(float(fx["adam/lr"]))
  assert config.weight_decay == pytest.approx(float(fx["adam/weight_decay"]))
  params, grads = _classifier(fx, "coord/classifier_weight_grad_after")
  tx = make_optimizer(config, steps_per_epoch=5)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  _check_step(fx, optax.apply_updates(params, updates))


@pytest.mark.parity
def test_parity_coordination_then_adam_from_the_raw_gradient():
  fx = load_fixture("deform_pathomic_net.npz")
  params, grads = _classifier(fx, "coord/classifier_weight_grad_before")
  coord = coordinate_gradients({"classifier/kernel": ModalitySplit.concat(sizes=(128, 128))}, mode="reference")
  trainable = trainable_mask_from_predicate(lambda path, _: path.startswith("classifier/"))
  tx = make_optimizer(OptimConfig(), steps_per_epoch=5, coordination=coord, trainable=trainable)
  logits = subspace_logits(
    params["classifier"]["kernel"],
    params["classifier"]["bias"],
    (fx["out/pathomic_vec_tumor"], fx["out/pathomic_vec_immune"]),
  )
  scores, _ = get_task("diagnosis").modality_scores(logits, {"diagnosis": fx["input/label_diag2021"]})
  step = jax.jit(lambda g, s, p, sc: tx.update(g, s, p, modality_scores=sc))
  updates, _ = step(grads, tx.init(params), params, scores)
  _check_step(fx, optax.apply_updates(params, updates))


def test_schedule_is_per_epoch_cosine():
  config = OptimConfig(learning_rate=0.01, epochs=4)
  schedule = epoch_schedule(config, steps_per_epoch=3)
  lrs = np.array([schedule(s) for s in range(15)])
  for epoch in range(5):
    expected = 0.01 * 0.5 * (1 + math.cos(math.pi * min(epoch, 4) / 4))
    np.testing.assert_allclose(lrs[3 * epoch : 3 * epoch + 3], expected, rtol=1e-6, atol=1e-12)
  assert lrs[12] == 0.0
  const = epoch_schedule(OptimConfig(schedule="constant"), 3)
  assert float(const(100)) == pytest.approx(1e-3)


def test_schedule_with_warmup():
  config = OptimConfig(learning_rate=1.0, epochs=5, warmup_epochs=2)
  schedule = epoch_schedule(config, steps_per_epoch=2)
  per_epoch = np.array([schedule(2 * e) for e in range(6)])
  np.testing.assert_allclose(per_epoch[:2], [1 / 3, 2 / 3], rtol=1e-6)
  np.testing.assert_allclose(
    per_epoch[2:], [0.5 * (1 + math.cos(math.pi * k / 3)) for k in range(4)], rtol=1e-6, atol=1e-7
  )


def _toy():
  params = {"w": jnp.array([1.0, -2.0, 3.0]), "head": {"kernel": jnp.array([[0.5, -0.5]])}}
  grads = {"w": jnp.array([0.1, 0.5, -0.7]), "head": {"kernel": jnp.zeros((1, 2))}}
  return params, grads


def test_coupled_versus_decoupled_decay():
  params, grads = _toy()
  schedule_free = dict(schedule="constant", learning_rate=0.01, weight_decay=0.1)
  coupled = make_optimizer(OptimConfig(**schedule_free), steps_per_epoch=1)
  updates, _ = coupled.update(grads, coupled.init(params), params)
  g = grads["w"] + 0.1 * params["w"]  # fresh Adam: step = lr * g / (|g| + eps)
  # rtol: optax bias-corrects in float32, where 1 - 0.999 is off by 1.3e-5 relative.
  np.testing.assert_allclose(updates["w"], -0.01 * g / (jnp.abs(g) + 1e-8), rtol=2e-5)
  for config in (OptimConfig(name="adamw", **schedule_free), OptimConfig(coupled_weight_decay=False, **schedule_free)):
    tx = make_optimizer(config, steps_per_epoch=1)
    ref = optax.adamw(0.01, weight_decay=0.1)
    state, ref_state, p, ref_p = tx.init(params), ref.init(params), params, params
    for _ in range(3):
      u, state = tx.update(grads, state, p)
      ru, ref_state = ref.update(grads, ref_state, ref_p)
      p, ref_p = optax.apply_updates(p, u), optax.apply_updates(ref_p, ru)
    for a, b in zip(jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(ref_p)):
      np.testing.assert_allclose(a, b, rtol=1e-6)


def test_sgd_with_coupled_decay():
  params, grads = _toy()
  tx = make_optimizer(OptimConfig(name="sgd", schedule="constant", learning_rate=0.1, momentum=0.9), steps_per_epoch=1)
  state = tx.init(params)
  u1, state = tx.update(grads, state, params)
  u2, state = tx.update(grads, state, params)
  g = grads["w"] + 0.1 * params["w"]
  np.testing.assert_allclose(u1["w"], -0.1 * g, rtol=1e-6)
  np.testing.assert_allclose(u2["w"], -0.1 * (0.9 * g + g), rtol=1e-6)


def test_frozen_parameters_are_neither_decayed_nor_updated():
  params, grads = _toy()
  grads_with_noise = {"w": grads["w"], "head": {"kernel": jnp.ones((1, 2))}}
  for trainable in (
    trainable_mask_from_predicate(lambda path, _: not path.startswith("head")),
    {"w": True, "head": {"kernel": False}},
  ):
    tx = make_optimizer(OptimConfig(), steps_per_epoch=2, trainable=trainable)
    state, p = tx.init(params), params
    for g in (grads, grads_with_noise, grads):
      updates, state = jax.jit(tx.update)(g, state, p)
      p = optax.apply_updates(p, updates)
    np.testing.assert_array_equal(p["head"]["kernel"], params["head"]["kernel"])
    assert not np.allclose(p["w"], params["w"])
  # Without the mask the zero-gradient head would be weight-decayed.
  tx = make_optimizer(OptimConfig(), steps_per_epoch=2)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert np.all(updates["head"]["kernel"] != 0)


def test_bad_config():
  with pytest.raises(ValueError, match="name"):
    OptimConfig(name="lamb")
  with pytest.raises(ValueError, match="schedule"):
    OptimConfig(schedule="step")
  with pytest.raises(ValueError, match="warmup_epochs"):
    OptimConfig(epochs=3, warmup_epochs=3)
  with pytest.raises(ValueError, match="steps_per_epoch"):
    epoch_schedule(OptimConfig(), 0)
