"""The TCGA GBM-LGG genomics comparison: CLI outputs on real-table slices, model and loop units."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

import jax
import jax.numpy as jnp
import optax
from sklearn import metrics as skm
from sksurv.metrics import concordance_index_censored

from experiments import compare_genomic
from smml_jax.data import patient_arrays, splits as protocols, tcga_gbmlgg, tcga_gbmlgg_tables
from smml_jax.evaluate import genomic_study
from smml_jax.models.genomic import build_genomic_model
from smml_jax.optim.coordination import coordinate_gradients
from smml_jax.optim.factory import OptimConfig
from smml_jax.tasks import get_task
from smml_jax.train import in_memory, steps
from smml_jax.train.state import TrainState

try:
  from tests.conftest import shared_data_dir
except ImportError:  # plain `pytest` from the tests folder
  from conftest import shared_data_dir

RESULT_COLUMNS = ["model", "task", "metric", "mean", "std", "n_folds"]


def _key(seed: int) -> jax.Array:
  # RngBitGenerator keys: op by op, threefry keys make eager inits compile ~2x longer on CPU.
  return jax.random.key(seed, impl="rbg")


def _run(tmp_path, *extra):
  out = tmp_path / "out"
  code = compare_genomic.main(["--data-root", str(shared_data_dir()), "--out", str(out), *extra])
  assert code == 0
  return (
    pd.read_csv(out / "results.csv"),
    pd.read_csv(out / "predictions.csv"),
    json.loads((out / "run.json").read_text()),
  )


def _check_results_match(results, recomputed, task):
  for (model, metric), g in recomputed.groupby(["model", "metric"]):
    row = results[(results.model == model) & (results.metric == metric)]
    assert len(row) == 1, (model, metric)
    assert row.task.iloc[0] == task
    assert row.n_folds.iloc[0] == len(g)
    np.testing.assert_allclose(row["mean"].iloc[0], g["value"].mean(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(row["std"].iloc[0], g["value"].std(ddof=1), rtol=1e-9, atol=1e-12)


@pytest.mark.slow
def test_grading_pnas15_slice_all_models(tmp_path):
  """Default pnas15 command with all three models: runs on the porpoise table (shared patients);
  results.csv agrees with metrics recomputed (independently) from predictions.csv."""
  results, preds, run = _run(
    tmp_path, "--task", "grading", "--protocol", "pnas15", "--models", "snn,subspace-genomic,linear", "--quick"
  )
  assert run["source"] == "porpoise" and run["splits"] == [0, 1]
  assert list(results.columns) == RESULT_COLUMNS
  assert list(preds.columns) == ["model", "protocol", "split", "seed", "case_id", "label", "prob_0", "prob_1", "prob_2"]
  assert set(results.model) == {"snn", "subspace-genomic", "linear"}
  assert set(results.metric) == {"auc", "auc_micro", "accuracy", "f1"}
  assert (results.n_folds == genomic_study.QUICK_SPLITS).all()
  np.testing.assert_allclose(preds[["prob_0", "prob_1", "prob_2"]].sum(1), 1.0, atol=1e-5)
  # Test patients are exactly each split's test set, once per model.
  cohort = tcga_gbmlgg.load_gbmlgg(shared_data_dir(), "porpoise", "grading")
  splits = protocols.pnas15_splits(cohort, shared_data_dir(), splits=[0, 1])
  for (model, k), g in preds.groupby(["model", "split"]):
    want = sorted(cohort.case_ids[splits[k]["test"]])
    assert sorted(g.case_id) == want, (model, k)
    np.testing.assert_array_equal(g.sort_values("case_id").label, cohort.grade[cohort.index_of(want)])
  rows = []
  for (model, k, seed), g in preds.groupby(["model", "split", "seed"]):
    probs, y = g[["prob_0", "prob_1", "prob_2"]].to_numpy(), g.label.to_numpy()
    pred = probs.argmax(1)
    values = {
      "auc": skm.roc_auc_score(y, probs, multi_class="ovr", average="macro"),
      "auc_micro": skm.roc_auc_score(np.eye(3)[y].ravel(), probs.ravel()),
      "accuracy": skm.accuracy_score(y, pred),
      "f1": skm.f1_score(y, pred, average="macro"),
    }
    rows += [dict(model=model, metric=m, value=v) for m, v in values.items()]
  _check_results_match(results, pd.DataFrame(rows), "grading")


@pytest.mark.slow
def test_survival_mcat5_slice(tmp_path):
  """mcat5: test = the held-out fold of the PORPOISE file; c_index recomputed with sksurv."""
  results, preds, run = _run(
    tmp_path,
    "--task",
    "survival",
    "--protocol",
    "mcat5",
    "--models",
    "snn,subspace-genomic,linear",
    "--splits",
    "0,1",
    "--epochs",
    "2",
  )
  assert list(results.columns) == RESULT_COLUMNS
  assert list(preds.columns) == ["model", "protocol", "split", "seed", "case_id", "time", "event", "risk"]
  assert set(results.metric) == {"c_index"} and (results.n_folds == 2).all()
  fold0 = pd.read_csv(shared_data_dir() / tcga_gbmlgg_tables.PORPOISE_SPLITS.format(fold=0))
  assert set(preds[preds.split == 0].case_id) == set(fold0["val"].dropna())
  rows = [
    dict(
      model=model,
      metric="c_index",
      value=concordance_index_censored(g.event.astype(bool).to_numpy(), g.time.to_numpy(), g.risk.to_numpy())[0],
    )
    for (model, _, _), g in preds.groupby(["model", "split", "seed"])
  ]
  _check_results_match(results, pd.DataFrame(rows), "survival")
  assert (results["mean"] > 0.5).all()  # even 2 epochs rank survival better than chance
  # mcat5 keeps the last epoch; epochs are numbered from 0 as in summary.json.
  assert run["epoch_numbering"] == "0-based"
  assert run["best_epochs"] == {"snn": [1, 1], "subspace-genomic": [1, 1]}


def test_subspace_genomic_on_pnas_source_is_a_clear_error(tmp_path, capsys):
  code = compare_genomic.main(
    [
      "--task",
      "grading",
      "--protocol",
      "pnas15",
      "--source",
      "pnas",
      "--models",
      "snn,subspace-genomic",
      "--data-root",
      str(shared_data_dir()),
      "--out",
      str(tmp_path),
      "--quick",
    ]
  )
  assert code == 2
  err = capsys.readouterr().err
  assert "microenvironment" in err and "porpoise" in err and "subspace-genomic" in err
  assert not (tmp_path / "results.csv").exists()
  with pytest.raises(ValueError, match="needs both gene subspaces"):
    build_genomic_model("subspace-genomic", num_classes=3, n_genes_tumour=80, n_genes_micro=0)
  # auto: the protocol's own table unless a model needs micro features it lacks.
  assert genomic_study.resolve_source("pnas15", ["snn", "linear"], "auto") == "pnas"
  assert genomic_study.resolve_source("pnas15", ["snn", "subspace-genomic"], "auto") == "porpoise"
  assert genomic_study.resolve_source("mcat5", ["subspace-genomic"], "auto") == "porpoise"


def test_bad_arguments_are_reported(tmp_path, capsys):
  base = ["--task", "grading", "--data-root", str(shared_data_dir()), "--out", str(tmp_path)]
  assert compare_genomic.main(base + ["--protocol", "mcat5", "--models", "snn,gbm"]) == 2
  assert "gbm" in capsys.readouterr().err
  assert compare_genomic.main(base + ["--protocol", "mcat5", "--splits", "7"]) == 2
  assert "0..4" in capsys.readouterr().err


def _toy_arrays(n=48, gt=12, gm=9, k=3, seed=0):
  rng = np.random.default_rng(seed)
  xt, xm = rng.normal(size=(n, gt)).astype(np.float32), rng.normal(size=(n, gm)).astype(np.float32)
  # Tumour genes carry the label; micro genes carry a conflicting (permuted) signal.
  y = np.argmax(xt[:, :k] + 0.3 * rng.normal(size=(n, k)), 1)
  xm[:, :k] = np.eye(k)[(y + 1) % k] * 2.0
  return patient_arrays.GenomicArrays(
    xt, xm, y.astype(np.int64), rng.uniform(10, 1000, n).astype(np.float32), rng.integers(0, 2, n)
  )


def _small_spec():
  return build_genomic_model(
    "subspace-genomic",
    num_classes=3,
    n_genes_tumour=12,
    n_genes_micro=9,
    options={"widths": (16, 8), "dropout_rate": 0.0},
  )


def _batch(arrays, task):
  """Every row of `arrays` as one bag-free batch (no patches, no coords) with its mask."""
  return dict(arrays.fields(task.label_field), mask=np.ones(len(arrays), bool))


def _loss_config(spec, task, coordination=True):
  return steps.LossConfig(
    task=task, class_weights=(1.0, 1.0, 1.0), coordination=coordination and spec.coordination, head_losses=True
  )


@pytest.mark.slow  # ~22 s of CPU: eager gradients over seeds, then two jitted train steps
def test_subspace_genomic_coordination_changes_the_fused_kernel_gradient():
  """Through the slide runs' loss, optimiser and train step: a bag-free batch is a batch."""
  spec = _small_spec()
  task = get_task("grading")
  data = _batch(_toy_arrays(), task)
  cfg, plain = _loss_config(spec, task), _loss_config(spec, task, coordination=False)
  split = spec.splits
  optim = OptimConfig(learning_rate=1e-3, weight_decay=1e-4, epochs=10)
  tx_coord = steps.make_run_optimizer(spec, optim, steps_per_epoch=1, coordination_mode="pcgrad")
  tx_plain = steps.make_run_optimizer(spec, optim, steps_per_epoch=1, coordination_mode=None)
  conflicts = 0
  for seed in range(8):
    params = spec.module.init(jax.random.PRNGKey(seed), steps.model_inputs(data))["params"]
    (_, (out, _)), grads = jax.value_and_grad(steps.loss_fn, has_aux=True)(
      params, data, jax.random.PRNGKey(0), spec=spec, cfg=cfg, train=True
    )
    extra = steps.coordination_args(spec, params, out, data, task, data["mask"])
    coord = coordinate_gradients(split)
    new, state = coord.update(grads, coord.init(params), params, **extra)
    g, h = grads["classifier"]["kernel"], new["classifier"]["kernel"]
    changed = np.asarray(state.changed["classifier/kernel"])  # (2, K)
    others_same = jax.tree_util.tree_map(
      lambda a, b: bool(jnp.all(a == b)),
      {k: v for k, v in grads.items() if k != "classifier"},
      {k: v for k, v in new.items() if k != "classifier"},
    )
    assert all(jax.tree_util.tree_leaves(others_same))
    if not changed.any():
      np.testing.assert_array_equal(g, h)
      continue
    conflicts += 1
    assert not np.allclose(g, h)
    weak = int(np.argmin(np.asarray(extra["modality_scores"])))
    blocks = (slice(0, 8), slice(8, 16))
    for col in np.flatnonzero(changed[weak]):
      u_old, v = np.asarray(g[blocks[weak], col]), np.asarray(g[blocks[1 - weak], col])
      u_new = np.asarray(h[blocks[weak], col])
      assert u_old @ v < 0  # it was a conflict
      np.testing.assert_allclose(u_new @ v, 0.0, atol=1e-5 * np.linalg.norm(u_old) * np.linalg.norm(v))
      np.testing.assert_allclose(np.linalg.norm(u_new), np.linalg.norm(u_old), rtol=1e-5)
    # End to end: the first step changes only the fused kernel's Adam moments (Adam's first
    # update is sign-like), the next ones the fused kernel itself.
    step_c = steps.make_train_step(spec, tx_coord, cfg)
    step_p = steps.make_train_step(spec, tx_plain, plain)
    state_of = lambda tx: TrainState(
      step=jnp.zeros((), jnp.int32),
      params=jax.tree_util.tree_map(jnp.copy, params),
      opt_state=tx.init(params),
      rng=jax.random.PRNGKey(0),
    )
    sc, sp = state_of(tx_coord), state_of(tx_plain)
    for _ in range(3):
      sc, mc = step_c(sc, data)
      sp, mp = step_p(sp, data)
    assert "coordination_edited" in mc and "coordination_edited" not in mp
    assert float(jnp.abs(sc.params["classifier"]["kernel"] - sp.params["classifier"]["kernel"]).max()) > 1e-6
    break
  assert conflicts > 0, "no seed produced a gradient conflict between the subspaces"


def test_subspace_heads_train_without_moving_the_encoders():
  spec = _small_spec()
  task = get_task("grading")
  data = _batch(_toy_arrays(), task)
  params = spec.module.init(_key(0), steps.model_inputs(data))["params"]

  def head_loss(p):
    out = spec.module.apply({"params": p}, steps.model_inputs(data))
    return optax.softmax_cross_entropy_with_integer_labels(out.logits_tumour + out.logits_micro, data["grade"]).mean()

  grads = jax.grad(head_loss)(params)
  for name in ("snn_tumour", "snn_micro", "classifier"):
    assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree_util.tree_leaves(grads[name]))
  for name in ("classifier_tumour", "classifier_micro"):
    assert float(jnp.abs(grads[name]["kernel"]).max()) > 0.0


def test_head_losses_are_added_only_when_asked():
  """`LossConfig.head_losses` adds each subspace head's task loss; off (the slide runs' default)
  the loss is the fused task loss alone."""
  spec = _small_spec()
  task = get_task("grading")
  data = _batch(_toy_arrays(), task)
  params = spec.module.init(_key(0), steps.model_inputs(data))["params"]
  run = lambda cfg: steps.loss_fn(params, data, _key(0), spec=spec, cfg=cfg, train=False)
  total, (out, parts) = run(_loss_config(spec, task))
  fused = task.loss(out.logits, data, data["mask"], (1.0, 1.0, 1.0))
  heads = [task.loss(getattr(out, f"logits_{m}"), data, data["mask"], (1.0, 1.0, 1.0)) for m in ("tumour", "micro")]
  np.testing.assert_allclose(parts["head_loss_tumour"], heads[0], rtol=1e-6)
  np.testing.assert_allclose(total, fused + heads[0] + heads[1], rtol=1e-6)
  total_off, (_, parts_off) = run(dataclasses.replace(_loss_config(spec, task), head_losses=False))
  assert not any(k.startswith("head_loss") for k in parts_off)
  np.testing.assert_allclose(total_off, fused, rtol=1e-6)


@pytest.mark.parametrize("task", ["grading", pytest.param("survival", marks=pytest.mark.slow)])
def test_training_selects_and_restores_the_best_validation_epoch(task):
  spec = build_genomic_model(
    "snn", num_classes=3 if task == "grading" else 4, n_genes_tumour=12, n_genes_micro=9, options={"widths": (16, 8)}
  )
  train, val = _toy_arrays(seed=1), _toy_arrays(n=30, seed=2)
  if task == "survival":
    bins = lambda a: np.minimum((a.time // 250).astype(np.int64), 3)
    train = dataclasses.replace(train, target=bins(train))
    val = dataclasses.replace(val, target=bins(val))
  spec_task = get_task(task)
  loss = steps.LossConfig(
    task=spec_task,
    class_weights=spec_task.class_weights("train", train.truth(spec_task.label_field)),
    coordination=False,
    head_losses=True,
  )
  optim = OptimConfig(learning_rate=3e-3, weight_decay=1e-4, epochs=6)
  result = in_memory.fit(spec, loss, optim, train, val, batch_size=16, seed=0)
  scores = [r["val_score"] for r in result.history]
  # Epochs are 0-based, as in the slide runs' summary.json.
  assert [r["epoch"] for r in result.history] == list(range(6))
  assert len(scores) == 6 and result.best_epoch == int(np.nanargmax(scores))
  restored = in_memory.selection_score(spec, result.params, val, loss)
  np.testing.assert_allclose(restored, max(scores), rtol=1e-6)
  fixed = in_memory.fit(spec, loss, optim, train, batch_size=16, select_on_val=False, seed=0)
  assert fixed.best_epoch == 5 and "val_score" not in fixed.history[0]
  assert fixed.history[-1]["loss"] < fixed.history[0]["loss"]
  if task == "grading":  # other class weights (another split) reuse the compiled step
    misses = in_memory._compiled.cache_info().misses
    reweighted = dataclasses.replace(loss, class_weights=(3.0, 1.0, 0.5))
    other = in_memory.fit(spec, reweighted, optim, train, batch_size=16, select_on_val=False)
    assert in_memory._compiled.cache_info().misses == misses
    _, step = in_memory._compiled(spec, dataclasses.replace(loss, class_weights=None), optim, 3, "pcgrad")
    assert step._cache_size() == 1
    assert other.history[0]["loss"] != fixed.history[0]["loss"]  # the weights did change the loss
  with pytest.raises(ValueError, match="validation"):
    in_memory.fit(spec, loss, optim, train, None, batch_size=16)


def test_a_non_finite_loss_stops_the_genomic_fit_naming_the_epoch():
  spec = build_genomic_model("snn", num_classes=3, n_genes_tumour=12, n_genes_micro=9, options={"widths": (16, 8)})
  train = _toy_arrays()
  train = dataclasses.replace(train, genes_tumour=np.full_like(train.genes_tumour, np.nan))
  loss = steps.LossConfig(task=get_task("grading"), coordination=False)
  with pytest.raises(in_memory.TrainingDiverged, match="epoch 0"):
    in_memory.fit(spec, loss, OptimConfig(epochs=2), train, select_on_val=False)


def test_epoch_batches_cover_every_patient_once():
  idx, mask = patient_arrays.epoch_batches(37, 16, np.random.default_rng(0))
  assert idx.shape == mask.shape == (3, 16)
  assert sorted(idx[mask].tolist()) == list(range(37)) and mask.sum() == 37


def test_a_bad_data_root_writes_nothing(tmp_path, capsys):
  out = tmp_path / "out"
  code = compare_genomic.main(
    ["--task", "grading", "--protocol", "mcat5", "--data-root", str(tmp_path / "nowhere"), "--out", str(out), "--quick"]
  )
  assert code == 2
  assert "nowhere" in capsys.readouterr().err
  assert not out.exists()
