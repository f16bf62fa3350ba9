"""The Task object: one owner of the classification / survival decision."""

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from smml_jax import tasks
from smml_jax.losses.classification import weighted_cross_entropy
from smml_jax.losses.survival import risk_from_logits, survival_nll

REPO = pathlib.Path(__file__).resolve().parents[1]


def _logits(n=6, k=4, seed=0):
  return np.random.default_rng(seed).normal(size=(n, k)).astype(np.float32)


def test_get_task_forms_and_errors():
  assert isinstance(tasks.get_task("grading"), tasks.Classification)
  surv = tasks.get_task("survival", survival_alpha=0.15)
  assert isinstance(surv, tasks.Survival) and surv.num_classes == 4 and surv.alpha == 0.15
  assert tasks.get_task("diagnosis").class_names[0] == "GBM IDH-wt"
  assert tasks.get_task("grading", 5).class_names == tuple(f"class {k}" for k in range(5))
  with pytest.raises(ValueError, match="unknown task 'nope'"):
    tasks.get_task("nope")
  with pytest.raises(ValueError, match="class weights"):
    tasks.get_task("grading").class_weights("inverse", {})


def test_host_outputs_match_the_traced_losses_helpers():
  logits = _logits()
  probs = tasks.get_task("diagnosis").outputs(logits)["probs"]
  np.testing.assert_allclose(probs, jax.nn.softmax(jnp.asarray(logits)), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-12)
  out = tasks.get_task("survival").outputs(logits)
  np.testing.assert_allclose(out["risk"], risk_from_logits(jnp.asarray(logits)), rtol=1e-5)
  np.testing.assert_allclose(out["curve"], np.cumprod(1 - out["hazards"], axis=1), rtol=1e-12)
  assert out["risk"].dtype == np.float64


def test_losses_are_the_losses_modules():
  logits = jnp.asarray(_logits())
  mask = jnp.array([True] * 5 + [False])
  labels = jnp.array([0, 1, 2, 3, -1, 0])
  weights = (1.0, 2.0, 3.0, 4.0)
  got = tasks.get_task("diagnosis").loss(logits, {"diagnosis": labels}, mask, weights)
  np.testing.assert_allclose(got, weighted_cross_entropy(logits, labels, jnp.asarray(weights), mask))
  batch = {"surv_bin": jnp.array([0, 1, 2, 3, 0, 1]), "event": jnp.array([1, 0, 1, 0, 1, 1])}
  got = tasks.get_task("survival", survival_alpha=0.3).loss(logits, batch, mask)
  np.testing.assert_allclose(got, survival_nll(logits, batch["surv_bin"], batch["event"], mask, alpha=0.3))


def test_prediction_columns_round_trip_through_a_table():
  logits = _logits()
  for name, truth in (
    ("grading", {"grade": np.array([0, 1, 2, 0, 1, 2])}),
    ("survival", {"surv_time": np.arange(6.0) * 100, "event": np.array([1, 0, 1, 1, 0, 1])}),
  ):
    task = tasks.get_task(name, 4 if name == "survival" else 3)
    logits_k = logits[:, : task.num_classes]
    table = pd.DataFrame({**task.prediction_columns(logits_k), **task.truth_columns(truth)})
    np.testing.assert_allclose(task.score_from_columns(table), task.prediction(logits_k))
    assert task.headline(table)[0] == task.selection_metric
    assert np.isfinite(task.headline(table)[1])


def test_survival_bins_are_fitted_on_the_training_rows():
  time = np.array([10.0, 20.0, 30.0, 40.0, 1000.0, 2000.0])
  event = np.array([1, 1, 1, 1, 1, 1])
  bins = tasks.get_task("survival").fit_target({"surv_time": time, "event": event}, [0, 1, 2, 3])
  assert bins.tolist() == [0, 1, 2, 3, 3, 3]


def test_the_task_decision_lives_in_tasks_only():
  """No `task == "survival"`-style branch outside smml_jax/tasks/ (README: code map)."""
  pattern = re.compile(
    r"""(==|!=)\s*["']survival["']|["']survival["']\s*(==|!=)|"""
    r"""\bif\s+(not\s+)?survival\b|(?<!losses)(?<!figures)\.survival\b"""
  )
  # (losses.survival and figures.survival are modules named after what they hold, not decisions.)
  offenders = []
  for folder in ("smml_jax", "experiments", "benchmarks"):
    for path in sorted((REPO / folder).rglob("*.py")):
      rel = path.relative_to(REPO).as_posix()
      if rel.startswith("smml_jax/tasks/"):
        continue
      for number, line in enumerate(path.read_text().splitlines(), 1):
        if pattern.search(line):
          offenders.append(f"{rel}:{number}: {line.strip()}")
  assert not offenders, "survival/classification decided outside smml_jax/tasks/:\n" + "\n".join(offenders)
