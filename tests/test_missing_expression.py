"""Training when some patients have no expression: the modality mask through the preprocessor,
the model, the consistency loss and the coordination scores; the survival confidence score."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smml_jax.data import normalise
from smml_jax.losses.consistency import batch_consistency_loss
from smml_jax.models.registry import build_model
from smml_jax.optim.coordination import coordinate_blocks
from smml_jax.tasks import get_task
from smml_jax.train.steps import LossConfig, coordination_args, loss_fn, model_inputs

TINY = {"dim": 8, "heads": 2, "dim_head": 4, "offset_groups": 2, "cpb_hidden": 4, "snn_widths": [8, 8]}
B, SIDE, D, GT, GM = 6, 8, 8, 3, 4


def _preprocessor(gene_transform="zscore"):
  return normalise.Preprocessor(
    gene_transform,
    {"tumour": (1.0,) * GT, "micro": (2.0,) * GM},
    {"tumour": (2.0,) * GT, "micro": (4.0,) * GM},
    (100.0, 200.0),
  )


def test_preprocessor_marks_nan_rows_absent_and_fills_them_with_zeros():
  genes_t = np.arange(B * GT, dtype=np.float32).reshape(B, GT)
  genes_m = np.ones((B, GM), np.float32)
  genes_t[1] = np.nan
  genes_m[1] = np.nan
  out = _preprocessor()({"genes_tumour": genes_t, "genes_micro": genes_m})
  np.testing.assert_array_equal(out["has_expression"], [True, False, True, True, True, True])
  np.testing.assert_array_equal(out["genes_tumour"][1], np.zeros(GT))
  np.testing.assert_array_equal(out["genes_micro"][1], np.zeros(GM))
  np.testing.assert_allclose(out["genes_tumour"][0], (genes_t[0] - 1.0) / 2.0)
  assert np.all(np.isfinite(out["genes_tumour"])) and np.all(np.isfinite(out["genes_micro"]))


class _Cohort:
  """What fit_preprocessor reads of a cohort: slides, raw genes, default transform."""

  def __init__(self, genes_t, genes_m):
    import pandas as pd

    n = len(genes_t)
    self.slides = pd.DataFrame(
      {
        "patient_id": [f"p{i}" for i in range(n)],
        "surv_time": np.arange(n, dtype=np.float32) * 100 + 50,
        "event": np.ones(n, np.int64),
      }
    )
    self.raw_genes = {"tumour": genes_t, "micro": genes_m}
    self.gene_names = {"tumour": [f"t{i}" for i in range(GT)], "micro": [f"m{i}" for i in range(GM)]}
    self.gene_transform = "zscore"

  def genes(self, subspace, indices=None):
    m = self.raw_genes[subspace]
    return m if indices is None else m[np.asarray(indices)]


def test_normalisation_is_fitted_on_present_training_expression_only():
  rng = np.random.default_rng(0)
  gt, gm = rng.normal(size=(10, GT)).astype(np.float32), rng.normal(size=(10, GM)).astype(np.float32)
  gt[2] = gm[2] = np.nan  # genuinely missing
  cohort = _Cohort(gt, gm)
  train = np.arange(8)
  pre = normalise.fit_preprocessor(cohort, train, absent=np.array([5]))  # 5: dropped
  present = np.array([0, 1, 3, 4, 6, 7])
  np.testing.assert_allclose(pre.mean["tumour"], gt[present].astype(np.float64).mean(0), rtol=1e-6)
  np.testing.assert_allclose(pre.std["micro"], gm[present].astype(np.float64).std(0), rtol=1e-6)
  # Survival cuts still see every training patient (absent expression is not absent survival).
  full = normalise.fit_preprocessor(_Cohort(np.ones((10, GT), np.float32), np.ones((10, GM), np.float32)), train)
  assert pre.surv_cuts == full.surv_cuts


def test_no_training_expression_at_all_gives_the_identity_normalisation():
  gt, gm = np.full((4, GT), np.nan, np.float32), np.full((4, GM), np.nan, np.float32)
  pre = normalise.fit_preprocessor(_Cohort(gt, gm), np.arange(4))
  assert pre.mean["tumour"] == (0.0,) * GT and pre.std["micro"] == (1.0,) * GM


def _batch(task="grading", present=(True, False, True, False, True, True), seed=0):
  rng = np.random.default_rng(seed)
  batch = {
    "patches": rng.normal(size=(B, SIDE * SIDE, D)).astype(np.float32),
    "genes_tumour": rng.normal(size=(B, GT)).astype(np.float32),
    "genes_micro": rng.normal(size=(B, GM)).astype(np.float32),
    "mask": np.ones(B, bool),
    "has_expression": np.asarray(present, bool),
    "grade": np.array([0, 1, 2, 0, 1, 2]),
    "surv_bin": np.array([0, 1, 2, 3, 1, 0]),
    "surv_time": np.array([10.0, 300.0, 500.0, 900.0, 250.0, 40.0], np.float32),
    "event": np.array([1, 0, 1, 0, 1, 1]),
  }
  return {k: jnp.asarray(v) for k, v in batch.items()}


@pytest.fixture(scope="module")
def model():
  spec = build_model("subspace", num_classes=4, n_genes_tumour=GT, n_genes_micro=GM, feature_dim=D, options=TINY)
  params = spec.module.init(
    {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}, model_inputs(_batch())
  )["params"]
  return spec, params


@pytest.mark.slow  # builds and applies the subspace model
def test_absent_examples_use_the_learned_absent_embedding_not_their_genes(model):
  spec, params = model
  assert params["absent_tumour"].shape == (8,) and params["absent_micro"].shape == (8,)
  params = jax.tree.map(lambda x: x, params)
  params["absent_tumour"] = jnp.linspace(-1, 1, 8)
  batch = _batch()
  other = dict(batch, genes_tumour=batch["genes_tumour"] + 5.0, genes_micro=-batch["genes_micro"])
  out = spec.module.apply({"params": params}, model_inputs(batch))
  out2 = spec.module.apply({"params": params}, model_inputs(other))
  absent = ~np.asarray(batch["has_expression"])
  np.testing.assert_allclose(out.gene_tumour[absent], np.tile(params["absent_tumour"], (2, 1)))
  np.testing.assert_allclose(out.logits[absent], out2.logits[absent], rtol=1e-5, atol=1e-6)
  assert not np.allclose(out.logits[~absent], out2.logits[~absent])
  # All present: the same function as a batch without the mask.
  full = dict(batch, has_expression=jnp.ones(B, bool))
  no_mask = {k: v for k, v in model_inputs(batch).items() if k != "has_expression"}
  np.testing.assert_allclose(
    spec.module.apply({"params": params}, model_inputs(full)).logits,
    spec.module.apply({"params": params}, no_mask).logits,
    rtol=1e-6,
  )


@pytest.mark.slow  # builds and applies the subspace model
def test_consistency_compares_only_pairs_that_both_have_expression(model):
  spec, params = model
  batch = _batch()
  cfg = LossConfig(task="grading", consistency_weight=1.0)
  _, (out, parts) = loss_fn(params, batch, jax.random.PRNGKey(0), spec=spec, cfg=cfg, train=False)
  present = np.asarray(batch["has_expression"])
  want = batch_consistency_loss(out.gene_tumour[present], _grid_rows(out.grid_tumour, present)).sum()
  np.testing.assert_allclose(parts["consistency_tumour"], want, rtol=1e-5)
  assert np.isfinite(float(parts["loss"]))


def _grid_rows(grid, present):
  groups = grid.shape[0] // len(present)
  return grid.reshape(len(present), groups, *grid.shape[1:])[present].reshape(-1, *grid.shape[1:])


@pytest.mark.slow  # builds and applies the subspace model
def test_coordination_scores_skip_absent_examples_and_none_present_skips(model):
  spec, params = model
  task = get_task("grading")
  batch = _batch()
  out = spec.module.apply({"params": params}, model_inputs(batch))
  args = coordination_args(spec, params, out, batch, task, batch["mask"])
  present = batch["has_expression"]
  want, _ = task.modality_scores(spec.modality_logits(params, out), batch, present)
  np.testing.assert_allclose(args["modality_scores"], want)
  assert not bool(args["skip"])
  none = dict(batch, has_expression=jnp.zeros(B, bool))
  args = jax.jit(lambda b: coordination_args(spec, params, out, b, task, b["mask"]))(none)
  assert bool(args["skip"])
  blocks = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 3)), jnp.float32)
  new, changed = coordinate_blocks(blocks, args["modality_scores"], skip=args["skip"])
  np.testing.assert_array_equal(new, blocks) and np.testing.assert_array_equal(changed, False)


def _numpy_confidence(logits, surv_bin, event):
  h = 1 / (1 + np.exp(-np.asarray(logits, np.float64)))
  survival = np.cumprod(1 - h, axis=1)
  before = np.concatenate([np.ones((len(h), 1)), survival[:, :-1]], axis=1)
  out = []
  for i, (y, e) in enumerate(zip(surv_bin, event)):
    out.append(h[i, y] * before[i, y] if e == 1 else survival[i, y])
  return np.asarray(out)


def test_survival_confidence_score_is_the_likelihood_of_what_was_observed():
  task = get_task("survival", coordination_score="confidence")
  batch = _batch("survival")
  rng = np.random.default_rng(3)
  logits = [jnp.asarray(rng.normal(size=(B, 4)), jnp.float32) for _ in range(2)]
  mask = jnp.array([True, True, True, True, False, True])
  scores, skip = jax.jit(task.modality_scores)(logits, batch, mask)
  for m in range(2):
    conf = _numpy_confidence(logits[m], np.asarray(batch["surv_bin"]), np.asarray(batch["event"]))
    np.testing.assert_allclose(scores[m], conf[np.asarray(mask)].sum(), rtol=1e-5)
  assert not bool(skip)
  # All censored: the C-index cannot rank, the confidence still can (no skip).
  censored = dict(batch, event=jnp.zeros(B, jnp.int32))
  scores, skip = task.modality_scores(logits, censored, None)
  assert not bool(skip) and np.all(np.asarray(scores) > 0)
  assert bool(get_task("survival").modality_scores(logits, censored, None)[1])


def test_unknown_coordination_score_is_refused():
  with pytest.raises(ValueError, match="coordination_score"):
    get_task("survival", coordination_score="auc")


def test_drop_expression_draws_training_patients_with_expression_by_the_run_seed():
  from smml_jax.data import missing

  rng = np.random.default_rng(1)
  gt, gm = rng.normal(size=(12, GT)).astype(np.float32), rng.normal(size=(12, GM)).astype(np.float32)
  gt[2:4] = gm[2:4] = np.nan  # patient p1 has no expression
  cohort = _Cohort(gt, gm)
  cohort.slides["patient_id"] = [f"p{i // 2}" for i in range(12)]  # two slides per patient
  train = np.arange(10)  # slides 10, 11 (patient p5) are not training slides
  a = missing.dropped_slides(cohort, train, 0.5, seed=0)
  assert set(a) <= set(train) and 3 not in a and 2 not in a  # p1 has no expression to drop
  drawn = {f"p{i // 2}" for i in a}
  assert len(drawn) == 2  # round(0.5 x 4 patients with expression)
  assert set(a) == {i for i in train if f"p{i // 2}" in drawn}  # every slide of a drawn patient
  np.testing.assert_array_equal(a, missing.dropped_slides(cohort, train, 0.5, seed=0))
  others = {tuple(missing.dropped_slides(cohort, train, 0.5, seed=s)) for s in range(1, 8)}
  assert len(others | {tuple(a)}) > 1
  assert len(missing.dropped_slides(cohort, train, 0.0, seed=0)) == 0
  assert len(missing.dropped_slides(cohort, train, 1.0, seed=0)) == 8


def test_dropped_slides_reach_the_step_without_expression():
  from smml_jax.data import missing

  drop = missing.DropExpression(frozenset({"s1"}), _preprocessor())
  batch = {
    "slide_id": np.array(["s0", "s1", "s2"]),
    "genes_tumour": np.ones((3, GT), np.float32),
    "genes_micro": np.ones((3, GM), np.float32),
  }
  out = drop(batch)
  np.testing.assert_array_equal(out["has_expression"], [True, False, True])
  np.testing.assert_array_equal(out["genes_tumour"][1], 0.0)
  assert np.all(batch["genes_tumour"] == 1.0)  # the input batch is not modified
  # A run where every slide has expression feeds the unmasked model (no has_expression).
  assert "has_expression" not in missing.WithoutPresence(_preprocessor())(batch)


def test_drop_expression_and_coordination_score_config_checks():
  from smml_jax.train.config import ConfigError, config_to_dict, make_config, run_identity

  assert make_config({"data": {"drop_expression": 0.5}}).data.drop_expression == 0.5
  for bad in (1.5, -0.1):
    with pytest.raises(ConfigError, match="data.drop_expression"):
      make_config({"data": {"drop_expression": bad}})
  with pytest.raises(ConfigError, match="train.coordination_score"):
    make_config({"task": "grading", "train": {"coordination_score": "cindex"}})
  with pytest.raises(ConfigError, match="train.coordination_score"):
    make_config({"train": {"coordination_score": "brier"}})
  cfg = make_config({"task": "survival", "train": {"coordination_score": "confidence"}})
  # Both are part of the run's identity (what --resume compares).
  base = run_identity(config_to_dict(make_config({"task": "survival"})))
  assert run_identity(config_to_dict(cfg)) != base
  assert run_identity(config_to_dict(make_config({"task": "survival", "data": {"drop_expression": 0.25}}))) != base
  # A run stored before these keys existed trained with their defaults: it still resumes.
  older = config_to_dict(make_config({"task": "survival"}))
  del older["data"]["drop_expression"], older["train"]["coordination_score"]
  assert run_identity(older) == base


@pytest.mark.slow
def test_a_run_with_dropped_expression_trains_and_records_whom_it_dropped(tmp_path):
  import json

  import yaml

  from smml_jax.train.config import make_config
  from smml_jax.train.loop import train

  spec = tmp_path / "tiny.yaml"
  spec.write_text(
    yaml.safe_dump(
      {
        "layout": "synthetic",
        "n_patients": 40,
        "grid_side": 8,
        "feature_dim": 8,
        "n_genes_tumour": GT,
        "n_genes_micro": GM,
      }
    )
  )
  config = make_config(
    {
      "model_options": TINY,
      "data": {"data": str(spec), "data_dir": str(tmp_path / "records"), "drop_expression": 0.5},
      "train": {"epochs": 1, "batch_size": 8, "eval_batch_size": 16, "progress": False},
    }
  )
  summary = train(config, tmp_path / "run", log=lambda _: None)
  assert np.isfinite(summary["test"]["auc"])
  record = json.loads((tmp_path / "run" / "cohort.json").read_text())["expression"]
  train_slides = json.loads((tmp_path / "run" / "cohort.json").read_text())["splits"]["train"]
  patients = {s.rsplit("-", 1)[0] for s in train_slides}
  dropped = record["dropped_slides"]
  assert dropped and set(dropped) <= set(train_slides)
  assert abs(len({s.rsplit("-", 1)[0] for s in dropped}) - len(patients) / 2) <= 1
  assert record["drop_expression"] == 0.5
  assert json.loads((tmp_path / "run" / "config.json").read_text())["data"]["drop_expression"] == 0.5


def _clam_cohort(root, rnaseq_missing=("c1",)):
  """A 4-patient CLAM layout; the patients in `rnaseq_missing` have every gene column empty."""
  import h5py
  import pandas as pd

  feats = root / "feats"
  feats.mkdir(parents=True, exist_ok=True)
  rows = []
  rng = np.random.default_rng(0)
  for i in range(4):
    case, slide = f"c{i}", f"c{i}-s"
    genes = {f"{g}_rnaseq": (np.nan if case in rnaseq_missing else rng.normal()) for g in ("T1", "T2", "M1", "M2")}
    rows.append({"case_id": case, "slide_id": slide, "survival_months": 10.0 + i, "censorship": i % 2, **genes})
    with h5py.File(feats / f"{slide}.h5", "w") as f:
      f["features"] = rng.normal(size=(4, 4)).astype(np.float32)
      f["coords"] = np.array([[0, 0], [256, 0], [0, 256], [256, 256]])
  pd.DataFrame(rows).to_csv(root / "table.csv", index=False)
  return {
    "layout": "clam",
    "csv": str(root / "table.csv"),
    "features": str(feats),
    "grid_side": 2,
    "feature_dim": 4,
    "signature": {"tumour": ["T1", "T2"], "micro": ["M1", "M2"]},
  }


def test_clam_patient_without_expression_is_refused_by_default_naming_it(tmp_path):
  from smml_jax.data import spec as spec_lib
  from smml_jax.data.errors import CohortError

  spec = _clam_cohort(tmp_path)
  with pytest.raises(CohortError, match=r"1 patient\(s\) have no expression.*'c1'.*missing_expression"):
    spec_lib.load_cohort(spec, tmp_path / "records")
  assert not list((tmp_path / "records").rglob("*.array_record*"))


def test_clam_patient_without_expression_loads_when_allowed(tmp_path, capsys):
  from smml_jax.data import spec as spec_lib
  from smml_jax.data.errors import CohortError

  spec = dict(_clam_cohort(tmp_path), missing_expression="allow")
  cohort = spec_lib.load_cohort(spec, tmp_path / "records")
  assert cohort.info["patients_without_expression"] == ["c1"]
  assert "1 patient(s) (1 slide(s)) have no expression" in capsys.readouterr().err
  present = normalise.has_expression(cohort, np.arange(len(cohort)))
  np.testing.assert_array_equal(present, cohort.slides["patient_id"] != "c1")
  pre = normalise.fit_preprocessor(cohort, np.arange(len(cohort)))
  assert np.all(np.isfinite(pre.mean["tumour"]))
  record = cohort.source[1]
  batch = pre({k: np.asarray(record[k])[None] for k in ("genes_tumour", "genes_micro")})
  assert not batch["has_expression"][0] and np.all(batch["genes_tumour"] == 0)
  # A partial NaN is still an error naming the column, allowed or not.
  import pandas as pd

  table = pd.read_csv(tmp_path / "table.csv")
  table.loc[2, "M2_rnaseq"] = np.nan
  table.to_csv(tmp_path / "table.csv", index=False)
  with pytest.raises(CohortError, match="M2_rnaseq"):
    spec_lib.load_cohort(spec, tmp_path / "records2")


def test_missing_expression_spec_value_is_checked():
  from smml_jax.data.errors import CohortError
  from smml_jax.data.spec_fields import validate_spec

  with pytest.raises(CohortError, match="missing_expression"):
    validate_spec(
      {
        "layout": "clam",
        "csv": "a.csv",
        "features": "f",
        "signature": {"tumour": ["A"], "micro": ["B"]},
        "missing_expression": "skip",
      },
      "spec.yaml",
    )


def test_original_layout_missing_expression_file_refused_or_loaded(tmp_path):
  from test_data_original import make_layout, spec_for

  from smml_jax.data import spec as spec_lib
  from smml_jax.data.errors import CohortError

  root = tmp_path / "raw"
  truth = make_layout(root, np.random.default_rng(0))
  star = next((root / "TCGA").rglob("sample1.*.tsv"))
  star.unlink()
  with pytest.raises(CohortError, match="does not exist.*patient.*missing_expression: allow"):
    spec_lib.load_cohort(spec_for(root), tmp_path / "r")
  cohort = spec_lib.load_cohort(spec_for(root, missing_expression="allow"), tmp_path / "r")
  absent = ~normalise.has_expression(cohort, np.arange(len(cohort)))
  assert absent.sum() == 1 and cohort.slides["slide_id"][absent].item() == truth["slides"][1]
  assert len(cohort.info["patients_without_expression"]) == 1
