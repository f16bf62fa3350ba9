"""experiments.predict on a tiny trained run: logged-prediction equality, one-slide inputs, errors."""

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
from smml_jax.train.config import make_config
from smml_jax.train.loop import train

pytestmark = pytest.mark.slow  # trains runs / spawns processes: minutes on 2 cores

TINY_SPEC = {
  "layout": "synthetic",
  "n_patients": 40,
  "grid_side": 8,
  "feature_dim": 16,
  "n_genes_tumour": 6,
  "n_genes_micro": 8,
  "second_slide_fraction": 0.5,
}
TINY_MODEL = {
  "heads": 2,
  "dim_head": 8,
  "offset_groups": 2,
  "cpb_hidden": 8,
  "snn_widths": [8, 8, 8, 32],
  "dim": 32,
  "dropout": 0.0,
  "snn_dropout": 0.0,
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """(run dir, spec path, data dir, cohort) of a one-epoch grading run on a tiny cohort."""
  root = tmp_path_factory.mktemp("tiny_predict")
  spec = root / "spec.json"
  spec.write_text(json.dumps(TINY_SPEC))
  data_dir = root / "data"
  config = make_config(
    {
      "task": "grading",
      "model_options": TINY_MODEL,
      "data": {"data": str(spec), "data_dir": str(data_dir), "val_fraction": 0.2, "test_fraction": 0.2},
      # accuracy is defined on any split, so epoch 0 is always "best" and logged.
      "train": {"epochs": 1, "batch_size": 4, "eval_batch_size": 4, "progress": False, "selection_metric": "accuracy"},
    }
  )
  run_dir = root / "run"
  train(config, run_dir, log=lambda _: None)
  return run_dir, spec, data_dir, load_cohort(str(spec), data_dir)


def _predict(argv) -> dict[str, pathlib.Path]:
  args = predict_cli.build_parser().parse_args([str(a) for a in argv])
  return predict_cli.predict(args)


def test_test_split_equals_logged_predictions(tiny, tmp_path):
  run_dir, spec, data_dir, _ = tiny
  paths = _predict(["--run", run_dir, "--input", spec, "--data-dir", data_dir, "--split", "test", "--out", tmp_path])
  got = pd.read_csv(paths["slides_csv"])
  logged = pd.DataFrame([json.loads(line) for line in (run_dir / "predictions_test.jsonl").read_text().splitlines()])
  assert list(got["slide_id"]) == list(logged["slide_id"])
  probs = [f"prob_{k}" for k in range(3)]
  np.testing.assert_allclose(got[probs].to_numpy(), logged[probs].to_numpy(), atol=1e-6)
  np.testing.assert_array_equal(got["pred"], logged["pred"])
  np.testing.assert_array_equal(got["label"], logged["label"])
  np.testing.assert_allclose(got[probs].sum(axis=1), 1.0, atol=1e-9)
  document = json.loads(paths["json"].read_text())
  assert document["meta"]["checkpoint"] == "best"
  assert [r["slide_id"] for r in document["slides"]] == list(logged["slide_id"])
  assert {r["patient_id"] for r in document["patients"]} == set(logged["patient_id"])


def test_checkpoint_folder_resolves_to_its_run(tiny, tmp_path):
  run_dir, spec, data_dir, _ = tiny
  assert inf.resolve_run_dir(run_dir / "checkpoints" / "latest") == (run_dir.resolve(), "latest")
  paths = _predict(
    [
      "--checkpoint",
      run_dir / "checkpoints" / "best",
      "--input",
      spec,
      "--data-dir",
      data_dir,
      "--split",
      "val",
      "--out",
      tmp_path,
    ]
  )
  assert len(pd.read_csv(paths["slides_csv"])) == len(
    json.loads((run_dir / "cohort.json").read_text())["splits"]["val"]
  )
  with pytest.raises(inf.InferenceError, match="neither a training run directory"):
    inf.resolve_run_dir(tmp_path)


def test_patient_level_averages_the_slides_of_a_patient(tiny, tmp_path):
  run_dir, spec, data_dir, cohort = tiny
  paths = _predict(["--run", run_dir, "--input", spec, "--data-dir", data_dir, "--out", tmp_path])
  slides = pd.read_csv(paths["slides_csv"])
  patients = pd.read_csv(paths["patients_csv"]).set_index("patient_id")
  assert len(slides) == len(cohort) and len(patients) == cohort.slides["patient_id"].nunique()
  probs = [f"prob_{k}" for k in range(3)]
  counts = slides["patient_id"].value_counts()
  multi = counts[counts > 1].index
  assert len(multi) > 0, "the tiny cohort should hold patients with two slides"
  for pid in multi:
    mean = slides.loc[slides["patient_id"] == pid, probs].mean().to_numpy()
    np.testing.assert_allclose(patients.loc[pid, probs].to_numpy(float), mean, atol=1e-9)
    assert patients.loc[pid, "n_slides"] == counts[pid]
    assert patients.loc[pid, "pred"] == int(np.argmax(mean))
  np.testing.assert_allclose(patients[probs].sum(axis=1), 1.0, atol=1e-9)


def _record(cohort, index: int) -> dict[str, np.ndarray]:
  return decode_example(cohort.source[index])


def _write_slide(tmp_path, cohort, index: int, clam: bool) -> tuple[pathlib.Path, pathlib.Path]:
  """One cohort slide as a feature file plus an expression file (shuffled, with extra genes)."""
  rec = _record(cohort, index)
  names = cohort.gene_names["tumour"] + cohort.gene_names["micro"]
  values = np.concatenate([rec["genes_tumour"], rec["genes_micro"]]).astype(np.float64)
  order = np.random.default_rng(index).permutation(len(names))
  names = [names[i] for i in order] + ["NOT_A_RUN_GENE"]
  values = np.append(values[order], 123.0)
  h5 = tmp_path / f"{rec['slide_id']}.h5"
  with h5py.File(h5, "w") as f:
    if clam:
      f["features"] = rec["patches"]
      f["coords"] = rec["coords"] * 256.0
    else:
      f["Res_feature"] = rec["patches"][None]
  if clam:  # GDC STAR augmented gene counts
    genes = tmp_path / "star.tsv"
    rows = "".join(
      f"ENSG{i:05d}\t{g}\tprotein_coding\t0\t{float(v)!r}\n" for i, (g, v) in enumerate(zip(names, values))
    )
    genes.write_text(
      "# gene-model: GENCODE v36\ngene_id\tgene_name\tgene_type\tunstranded\t"
      "fpkm_uq_unstranded\nN_unmapped\t\t\t1\t\n" + rows
    )
  else:
    genes = tmp_path / "genes.csv"
    pd.DataFrame({"gene": names, "value": values}).to_csv(genes, index=False)
  return h5, genes


@pytest.mark.parametrize("clam", [False, True], ids=["original_h5_table", "clam_h5_gdc_star"])
def test_one_slide_matches_the_cohort_prediction(tiny, tmp_path, clam):
  run_dir, spec, data_dir, cohort = tiny
  index = 3
  h5, genes = _write_slide(tmp_path, cohort, index, clam)
  paths = _predict(
    ["--run", run_dir, "--features", h5, "--genes", genes, "--patient-id", "P1", "--out", tmp_path / "out"]
  )
  one = pd.read_csv(paths["slides_csv"])
  assert list(one["slide_id"]) == [h5.stem] and list(one["patient_id"]) == ["P1"]
  run = inf.load_run(run_dir)
  want = inf.prediction_table(run, inf.run_model(run, inf.cohort_batches(run, cohort, [index])))
  probs = [f"prob_{k}" for k in range(3)]
  np.testing.assert_allclose(one[probs].to_numpy(), want[probs].to_numpy(), atol=1e-5)
  assert one["pred"].item() == want["pred"].item()


def test_missing_genes_are_listed_or_filled_with_the_training_mean(tiny, tmp_path):
  run_dir, _, _, cohort = tiny
  h5, genes = _write_slide(tmp_path, cohort, 0, clam=False)
  table = pd.read_csv(genes)
  dropped = [cohort.gene_names["micro"][1], cohort.gene_names["tumour"][4]]
  table[~table["gene"].isin(dropped)].to_csv(genes, index=False)
  with pytest.raises(inf.InferenceError) as err:
    _predict(["--run", run_dir, "--features", h5, "--genes", genes, "--out", tmp_path / "o"])
  message = str(err.value)
  assert "lacks 2 gene(s)" in message and all(g in message for g in dropped)
  assert "--missing-genes zero" in message
  assert (
    predict_cli.main(
      ["--run", str(run_dir), "--features", str(h5), "--genes", str(genes), "--out", str(tmp_path / "o")]
    )
    == 2
  )

  run = inf.load_run(run_dir)
  example = inf.slide_example(run, h5, genes, missing_genes="zero")
  normalised = run.preprocessor.transform_genes("micro", example["genes_micro"])
  assert normalised[1] == pytest.approx(0.0, abs=1e-5)  # the training mean
  assert abs(normalised[0]) > 1e-3  # present genes keep their own value
  paths = _predict(
    ["--run", run_dir, "--features", h5, "--genes", genes, "--missing-genes", "zero", "--out", tmp_path / "o"]
  )
  assert len(pd.read_csv(paths["slides_csv"])) == 1


def test_feature_dimension_mismatch_is_a_clear_error(tiny, tmp_path):
  run_dir, _, _, cohort = tiny
  _, genes = _write_slide(tmp_path, cohort, 0, clam=False)
  h5 = tmp_path / "wide.h5"
  with h5py.File(h5, "w") as f:
    f["features"] = np.zeros((10, 24), np.float32)
  with pytest.raises(inf.InferenceError, match=r"wide.h5.*needs \(N, 16\).*feature dimension 16"):
    _predict(["--run", run_dir, "--features", h5, "--genes", genes, "--out", tmp_path / "o"])
  bad_cohort = tmp_path / "other.json"
  bad_cohort.write_text(json.dumps({**TINY_SPEC, "feature_dim": 12}))
  with pytest.raises(inf.InferenceError, match="feature dimension 12 .the run needs 16."):
    _predict(["--run", run_dir, "--input", bad_cohort, "--data-dir", tmp_path / "d", "--out", tmp_path / "o"])


def test_zero_filled_genes_are_counted_on_the_console(tiny, tmp_path, capsys):
  run_dir, _, _, cohort = tiny
  h5, genes = _write_slide(tmp_path, cohort, 0, clam=False)
  table = pd.read_csv(genes)
  dropped = [cohort.gene_names["micro"][1], cohort.gene_names["tumour"][4]]
  table[~table["gene"].isin(dropped)].to_csv(genes, index=False)
  assert (
    predict_cli.main(
      [
        "--run",
        str(run_dir),
        "--features",
        str(h5),
        "--genes",
        str(genes),
        "--missing-genes",
        "zero",
        "--out",
        str(tmp_path / "o"),
      ]
    )
    == 0
  )
  err = capsys.readouterr().err
  total = len(cohort.gene_names["tumour"]) + len(cohort.gene_names["micro"])
  assert f"2 of {total} gene(s)" in err and "training mean" in err
  assert all(g in err for g in dropped)
