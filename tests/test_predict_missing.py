"""experiments.predict on slides without expression: slides-only runs predict them (and say so per
row), runs that need expression refuse them, naming the slides and patients."""

from __future__ import annotations

import json
import pathlib

import h5py
import numpy as np
import pandas as pd
import pytest

from experiments import predict as predict_cli
from smml_jax.data.features import decode_example
from smml_jax.data.spec import load_cohort
from smml_jax.evaluate import inference as inf
from smml_jax.evaluate import missing_modality as mm
from smml_jax.train.config import make_config
from smml_jax.train.loop import train

TINY_SPEC = {
  "layout": "synthetic",
  "n_patients": 30,
  "grid_side": 8,
  "feature_dim": 16,
  "n_genes_tumour": 6,
  "n_genes_micro": 8,
}


@pytest.fixture(scope="module")
def cohort_spec(tmp_path_factory):
  root = tmp_path_factory.mktemp("missing_predict")
  spec = root / "spec.json"
  spec.write_text(json.dumps(TINY_SPEC))
  return spec, root / "data"


def _train(spec, data_dir, out, model, options, **extra):
  layer = {
    "task": "grading",
    "model": model,
    "model_options": options,
    "data": {"data": str(spec), "data_dir": str(data_dir), "val_fraction": 0.2, "test_fraction": 0.2},
    "train": {"epochs": 1, "batch_size": 4, "eval_batch_size": 4, "progress": False, "selection_metric": "accuracy"},
    **extra,
  }
  train(make_config(layer), out, log=lambda _: None)
  return out


@pytest.fixture(scope="module")
def runs(cohort_spec, tmp_path_factory):
  """{'abmil': slides-only run, 'snn': a run that needs expression}."""
  spec, data_dir = cohort_spec
  root = tmp_path_factory.mktemp("runs")
  return {
    "abmil": _train(spec, data_dir, root / "abmil", "abmil", {"hidden": 8, "attention_hidden": 8}),
    "snn": _train(spec, data_dir, root / "snn", "snn", {}),
  }


def _predict(argv) -> dict[str, pathlib.Path]:
  args = predict_cli.build_parser().parse_args([str(a) for a in argv])
  return predict_cli.predict(args)


def _feature_file(tmp_path, spec, data_dir, index=0) -> tuple[pathlib.Path, str]:
  cohort = load_cohort(str(spec), data_dir)
  rec = decode_example(cohort.source[index])
  h5 = tmp_path / f"{rec['slide_id']}.h5"
  with h5py.File(h5, "w") as f:
    f["features"] = rec["patches"]
  return h5, str(rec["slide_id"])


def test_a_slides_only_run_predicts_a_cohort_without_expression(runs, cohort_spec, tmp_path):
  spec, data_dir = cohort_spec
  base = ["--run", runs["abmil"], "--input", spec, "--data-dir", data_dir, "--split", "test"]
  without = pd.read_csv(_predict(base + ["--without-expression", "--out", tmp_path / "a"])["slides_csv"])
  with_genes = pd.read_csv(_predict(base + ["--out", tmp_path / "b"])["slides_csv"])
  assert list(without.columns[:3]) == ["slide_id", "patient_id", "inputs"]
  assert set(without["inputs"]) == {"slides"} and set(with_genes["inputs"]) == {"slides"}
  probs = [f"prob_{k}" for k in range(3)]
  np.testing.assert_allclose(without[probs], with_genes[probs], atol=1e-6)
  logged = pd.DataFrame(
    [json.loads(line) for line in (runs["abmil"] / "predictions_test.jsonl").read_text().splitlines()]
  )
  np.testing.assert_allclose(without[probs], logged[probs], atol=1e-5)


def test_a_run_that_needs_expression_refuses_naming_the_slides(runs, cohort_spec, tmp_path):
  spec, data_dir = cohort_spec
  test_ids = json.loads((runs["snn"] / "cohort.json").read_text())["splits"]["test"]
  with pytest.raises(inf.InferenceError) as raised:
    _predict(
      [
        "--run",
        runs["snn"],
        "--input",
        spec,
        "--data-dir",
        data_dir,
        "--split",
        "test",
        "--without-expression",
        "--out",
        tmp_path / "o",
      ]
    )
  message = str(raised.value)
  assert f"{len(test_ids)} slide(s) have no expression" in message
  assert test_ids[0] in message and "model 'snn'" in message and "needs expression" in message
  assert not (tmp_path / "o").exists()
  h5, slide_id = _feature_file(tmp_path, spec, data_dir)
  with pytest.raises(inf.InferenceError, match=f"{slide_id}.*without --genes.*needs expression"):
    _predict(["--run", runs["snn"], "--features", h5, "--out", tmp_path / "p"])
  assert not (tmp_path / "p").exists()
  with_genes = pd.read_csv(
    _predict(
      ["--run", runs["snn"], "--input", spec, "--data-dir", data_dir, "--split", "test", "--out", tmp_path / "q"]
    )["slides_csv"]
  )
  assert set(with_genes["inputs"]) == {"slides+expression"}


def test_one_slide_without_genes_through_a_slides_only_run(runs, cohort_spec, tmp_path):
  spec, data_dir = cohort_spec
  h5, slide_id = _feature_file(tmp_path, spec, data_dir)
  paths = _predict(["--run", runs["abmil"], "--features", h5, "--out", tmp_path / "o"])
  row = pd.read_csv(paths["slides_csv"]).iloc[0]
  assert row["slide_id"] == slide_id and row["inputs"] == "slides"
  full = pd.read_csv(
    _predict(["--run", runs["abmil"], "--input", spec, "--data-dir", data_dir, "--out", tmp_path / "all"])["slides_csv"]
  ).set_index("slide_id")
  probs = [f"prob_{k}" for k in range(3)]
  np.testing.assert_allclose(row[probs].to_numpy(float), full.loc[slide_id, probs].to_numpy(float), atol=1e-5)


def test_expression_missing_reads_the_has_expression_column():
  table = pd.DataFrame({"slide_id": ["a", "b", "c"]})
  np.testing.assert_array_equal(mm.expression_missing(table), [False, False, False])
  table[mm.HAS_EXPRESSION] = [True, False, None]
  np.testing.assert_array_equal(mm.expression_missing(table), [False, True, True])


@pytest.mark.slow
def test_the_student_predicts_slides_its_teacher_refuses(cohort_spec, tmp_path):
  spec, data_dir = cohort_spec
  tiny = {"dim": 16, "heads": 2, "dim_head": 8, "offset_groups": 2, "cpb_hidden": 8, "snn_widths": [8, 8, 8, 16]}
  teacher = _train(spec, data_dir, tmp_path / "teacher", "subspace", tiny)
  student = _train(spec, data_dir, tmp_path / "student", "subspace-student", tiny, distill={"teacher": str(teacher)})
  h5, slide_id = _feature_file(tmp_path, spec, data_dir, index=3)
  with pytest.raises(inf.InferenceError, match=f"{slide_id}.*model 'subspace'.*subspace-student"):
    _predict(["--run", teacher, "--features", h5, "--out", tmp_path / "t"])
  row = pd.read_csv(_predict(["--run", student, "--features", h5, "--out", tmp_path / "s"])["slides_csv"]).iloc[0]
  assert row["inputs"] == "slides" and np.isfinite(row["prob_0"])
  meta = json.loads((tmp_path / "s" / "predictions.json").read_text())["meta"]
  assert meta["model"] == "subspace-student"


TINY_SUBSPACE = {"dim": 8, "heads": 2, "dim_head": 4, "offset_groups": 2, "cpb_hidden": 4, "snn_widths": [8, 8, 8, 8]}


@pytest.mark.slow  # trains a (tiny) subspace model
def test_a_run_trained_with_missing_expression_predicts_slides_without_it(cohort_spec, tmp_path):
  """A run that learned absence (data.drop_expression) predicts slides without expression through
  its absent embedding, says so per row, and its predictions differ from those with expression."""
  spec, data_dir = cohort_spec
  run_dir = _train(
    spec,
    data_dir,
    tmp_path / "masked",
    "subspace",
    TINY_SUBSPACE,
    **{
      "data": {
        "data": str(spec),
        "data_dir": str(data_dir),
        "val_fraction": 0.2,
        "test_fraction": 0.2,
        "drop_expression": 0.5,
      }
    },
  )
  run = inf.load_run(run_dir)
  assert mm.learned_absence(run) and mm.predicts_without_expression(run)
  with_genes = pd.read_csv(
    _predict(["--run", run_dir, "--input", spec, "--split", "test", "--out", tmp_path / "with"])["slides_csv"]
  )
  without = pd.read_csv(
    _predict(
      ["--run", run_dir, "--input", spec, "--split", "test", "--without-expression", "--out", tmp_path / "without"]
    )["slides_csv"]
  )
  assert (with_genes["inputs"] == mm.SLIDES_AND_EXPRESSION).all()
  assert (without["inputs"] == mm.SLIDES).all()
  probs = [c for c in without.columns if c.startswith("prob_")]
  assert np.isfinite(without[probs].to_numpy()).all()
  assert not np.allclose(with_genes[probs].to_numpy(), without[probs].to_numpy())
  h5, slide = _feature_file(tmp_path, spec, data_dir)
  one = pd.read_csv(_predict(["--run", run_dir, "--features", h5, "--out", tmp_path / "one"])["slides_csv"])
  assert one["inputs"].tolist() == [mm.SLIDES] and one["slide_id"].tolist() == [slide]
