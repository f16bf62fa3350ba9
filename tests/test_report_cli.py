"""experiments.report: a tiny trained survival run end to end, cohort figures, planted-gene IG."""

from __future__ import annotations

import html as html_lib
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from experiments import report as report_cli
from smml_jax.evaluate import cohort_figures, gene_importance, run_report, sampling
from smml_jax.models.outputs import ModelOutput
from smml_jax.tasks import get_task
from smml_jax.train.config import make_config
from smml_jax.train.loop import train

TINY_SPEC = {
  "layout": "synthetic",
  "n_patients": 40,
  "grid_side": 8,
  "feature_dim": 16,
  "n_genes_tumour": 6,
  "n_genes_micro": 8,
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


def assert_non_trivial_png(path) -> None:
  """Exists, and is a picture rather than a blank canvas: many non-white pixels, varied colour."""
  assert path.is_file(), f"{path} was not written"
  image = matplotlib.image.imread(path)[..., :3]
  assert image.shape[0] > 100 and image.shape[1] > 100, f"{path}: tiny image {image.shape}"
  ink = np.any(image < 0.9, axis=-1).mean()
  assert ink > 0.02, f"{path}: only {ink:.1%} of the pixels are not white"
  assert len(np.unique(image[::3, ::3].reshape(-1, 3).round(2), axis=0)) > 20, f"{path}: nearly one colour"


@pytest.fixture(scope="module")
def survival_report(tmp_path_factory):
  root = tmp_path_factory.mktemp("tiny_report")
  spec = root / "spec.json"
  spec.write_text(json.dumps(TINY_SPEC))
  config = make_config(
    {
      "task": "survival",
      "model_options": TINY_MODEL,
      "data": {"data": str(spec), "data_dir": str(root / "data"), "val_fraction": 0.2, "test_fraction": 0.25},
      "train": {
        "epochs": 1,
        "batch_size": 4,
        "eval_batch_size": 4,
        "progress": False,
        "selection_metric": "num_examples",
      },
    }
  )  # always defined: epoch 0 is kept
  run_dir = root / "run"
  train(config, run_dir, log=lambda _: None)
  out = root / "report"
  code = report_cli.main(
    ["--run", str(run_dir), "--out", str(out), "--slides", "2", "--ig-slides", "4", "--ig-steps", "4", "--top-k", "5"]
  )
  assert code == 0
  return run_dir, out


@pytest.mark.slow
def test_report_writes_every_output(survival_report):
  run_dir, out = survival_report
  for name in (
    "slide_00_sampling.png",
    "slide_01_sampling.png",
    "gene_importance.png",
    "kaplan_meier.png",
    "time_dependent_auc.png",
    "training_curves.png",
  ):
    assert_non_trivial_png(out / name)
  html = (out / "report.html").read_text()
  assert html.count("data:image/png;base64,") >= 5 and 'src="http' not in html
  metrics = json.loads((out / "report_metrics.json").read_text())
  assert metrics["task"] == "survival" and metrics["split"] == "test"
  assert 0.0 <= metrics["cohort"]["logrank_p"] <= 1.0
  assert 0.0 <= metrics["cohort"]["time_dependent_auc"]["mean_auc"] <= 1.0
  conc = metrics["region_concentration"]
  for key in (
    "micro_on_immune",
    "tumour_on_immune",
    "micro_over_tumour_on_immune",
    "micro_attention_on_immune",
    "tumour_attention_on_tumour",
    "lattice_on_immune",
    "micro_on_immune_mismatched",
    "micro_attention_on_immune_mismatched",
  ):
    assert np.isfinite(conc[key]) and conc[key] > 0
  assert conc["micro_over_tumour_on_immune"] == pytest.approx(conc["micro_on_immune"] / conc["tumour_on_immune"])
  assert f"{conc['micro_over_tumour_on_immune']:.3f}" in html
  assert html_lib.escape(sampling.immune_sentence(conc)) in html
  use = metrics["sampling_use"]
  assert use["metric"] == "c_index" and 0.0 <= use["trained"] <= 1.0
  for s in ("tumour", "micro"):
    for ablation in ("offsets_zero", "attention_off"):
      assert 0.0 <= use[f"{s}_{ablation}"] <= 1.0
      assert use[f"{s}_{ablation}_change"] == pytest.approx(use[f"{s}_{ablation}"] - use["trained"])
    assert use["offsets"][s]["mean_abs_offset"] > 0
  assert "Does the prediction use the sampling points?" in html


@pytest.mark.slow
def test_report_gene_table_and_predictions(survival_report):
  run_dir, out = survival_report
  genes = pd.read_csv(out / "gene_importance.csv")
  cohort = json.loads((run_dir / "cohort.json").read_text())
  for s in ("tumour", "micro"):
    part = genes[genes["subspace"] == s]
    assert sorted(part["gene"]) == sorted(cohort["gene_names"][s])
    assert list(part["rank"]) == list(range(1, len(part) + 1))
    assert np.all(np.diff(part["mean_abs_attribution"].to_numpy()) <= 0)
  assert genes["mean_abs_attribution"].max() > 0
  preds = pd.read_csv(out / "predictions_test.csv")
  logged = pd.DataFrame([json.loads(line) for line in (run_dir / "predictions_test.jsonl").read_text().splitlines()])
  assert list(preds["slide_id"]) == list(logged["slide_id"])
  np.testing.assert_allclose(preds["risk"], logged["risk"], rtol=1e-5, atol=1e-6)
  hazards = [f"hazard_{k}" for k in range(4)]
  np.testing.assert_allclose(preds[hazards], logged[hazards], atol=1e-6)
  curve = preds[[f"surv_{k}" for k in range(4)]].to_numpy()
  assert np.all(np.diff(curve, axis=1) <= 0) and np.all((curve >= 0) & (curve <= 1))


def test_classification_cohort_figures(tmp_path):
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(3), 10)
  logits = rng.normal(size=(30, 3)) + 2.0 * np.eye(3)[labels]
  probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
  table = pd.DataFrame({f"prob_{k}": probs[:, k] for k in range(3)}).assign(label=labels)
  images, metrics, note = cohort_figures.cohort_figures(table, tmp_path, task=get_task("grading"))
  assert [p.name for p in images] == ["roc.png", "confusion.png"] and note == ""
  for path in images:
    assert_non_trivial_png(path)
  assert metrics["num_examples"] == 30 and metrics["auc"] > 0.7


class PlantedGeneModel(nn.Module):
  """Logits depend on one microenvironment gene only (through a small nonlinear head)."""

  planted: int

  @nn.compact
  def __call__(self, batch, train: bool = False):
    x = batch["genes_micro"][:, self.planted : self.planted + 1]
    h = nn.tanh(nn.Dense(4)(x))
    logits = nn.Dense(3)(h) + 0.0 * jnp.mean(batch["patches"], axis=(1, 2))[:, None]
    return ModelOutput(logits=logits)


def test_planted_gene_ranks_first(tmp_path):
  planted, n_micro, n_tumour = 5, 9, 4
  model = PlantedGeneModel(planted)
  rng = np.random.default_rng(1)
  batch = {
    "patches": rng.normal(size=(6, 16, 4)).astype(np.float32),
    "genes_tumour": rng.normal(size=(6, n_tumour)).astype(np.float32),
    "genes_micro": rng.normal(size=(6, n_micro)).astype(np.float32),
    "mask": np.array([True] * 5 + [False]),
  }
  params = model.init(jax.random.PRNGKey(0), batch)["params"]
  names = {"tumour": [f"T{i}" for i in range(n_tumour)], "micro": [f"M{i}" for i in range(n_micro)]}
  tables = gene_importance.gene_importance(
    model.apply, params, [batch, batch], names, task=get_task("grading"), steps=16
  )
  micro = tables["micro"]
  assert micro["gene"].iloc[0] == f"M{planted}"
  assert micro["mean_abs_attribution"].iloc[0] > 0
  np.testing.assert_allclose(micro["mean_abs_attribution"].iloc[1:], 0.0, atol=1e-7)
  np.testing.assert_allclose(tables["tumour"]["mean_abs_attribution"], 0.0, atol=1e-7)
  path = gene_importance.gene_importance_csv(tables, tmp_path / "genes.csv")
  assert len(pd.read_csv(path)) == n_micro + n_tumour


def test_region_concentrations_points_attention_and_nulls():
  """Points half inside each slide's own immune region, attention mass on the inside half."""
  from smml_jax.evaluate import interpret

  n, groups, side, batch = 8, 2, 3, 3
  m = side * side
  rng = np.random.default_rng(0)
  immune = np.zeros((batch, n, n), bool)
  immune[0, :3, :3] = immune[1, 5:, 5:] = immune[2, :3, 5:] = True  # disjoint corners
  tumour = np.zeros_like(immune)
  tumour[:, 3:5, :] = True
  points = np.zeros((batch, groups, m, 2), np.float32)
  inside = np.zeros((batch, groups, m), bool)
  inside[:, :, : m // 2 + 1] = True
  for b in range(batch):
    rows, cols = np.nonzero(immune[b])
    pick = rng.integers(0, len(rows), size=(groups, m))
    points[b, ..., 0], points[b, ..., 1] = rows[pick], cols[pick]
    out_rows, out_cols = np.nonzero(~immune.any(0) & ~tumour[b])  # no slide's immune corner
    pick = rng.integers(0, len(out_rows), size=(groups, m))
    points[b, ..., 0] = np.where(inside[b], points[b, ..., 0], out_rows[pick])
    points[b, ..., 1] = np.where(inside[b], points[b, ..., 1], out_cols[pick])
  point_mass = np.where(inside, 10.0, 1.0).astype(np.float32)
  entry = {
    "points": points,
    "point_mass": point_mass,
    "patch_mass": np.asarray(interpret.patch_mass(points, point_mass, n)),
  }
  geometry = {"tumour": entry, "micro": entry}
  outputs = {"immune_mask": immune.reshape(batch, -1), "tumour_mask": tumour.reshape(batch, -1)}
  conc = sampling.region_concentrations(geometry, outputs, n)

  area = immune.reshape(batch, -1).mean(1)  # 9 / 64 each
  share = (m // 2 + 1) / m
  assert conc["micro_on_immune"] == pytest.approx(share / area.mean(), rel=1e-5)
  weighted = 10 * (m // 2 + 1) / (10 * (m // 2 + 1) + (m - m // 2 - 1))
  assert conc["micro_attention_on_immune"] == pytest.approx(weighted / area.mean(), rel=1e-5)
  assert conc["micro_on_immune_mismatched"] == 0.0  # the other slides' corners are never sampled
  assert conc["micro_attention_on_immune_mismatched"] == 0.0
  assert conc["tumour_on_tumour"] == 0.0 and conc["micro_over_tumour_on_immune"] == 1.0
  lattice = np.asarray(interpret.grid_points_to_pixels(interpret.lattice_grid(batch * groups, side), n, side, groups))
  assert conc["lattice_on_immune"] == pytest.approx(interpret.region_concentration(lattice, immune, n))
  assert conc["lattice_on_immune"] != pytest.approx(1.0, abs=1e-3)  # border points: not chance

  sentence = sampling.immune_sentence(conc)
  for key in (
    "micro_on_immune",
    "micro_attention_on_immune",
    "tumour_on_immune",
    "tumour_attention_on_immune",
    "lattice_on_immune",
    "micro_on_immune_mismatched",
  ):
    assert f"{conc[key]:.3f}x" in sentence, key
  single = sampling.region_concentrations(
    {s: {k: v[:1] for k, v in entry.items()} for s in geometry}, {k: v[:1] for k, v in outputs.items()}, n
  )
  assert "micro_on_immune_mismatched" not in single and "micro_on_immune" in single
  assert "mismatched" not in sampling.immune_sentence(single)


@pytest.mark.slow  # trains a run and builds its whole report (the module fixture)
def test_report_html_renders_in_chromium_with_every_figure_drawn(survival_report):
  from smml_jax.evaluate import screenshot

  _, out = survival_report
  html = (out / "report.html").read_text()
  images = screenshot.embedded_images(html)
  assert len(images) >= 6
  for name, data in images:  # each figure as the page carries it
    path = out / f"embedded_{name}"
    path.write_bytes(data)
    assert_non_trivial_png(path)
  if screenshot.find_chromium() is None:
    pytest.skip("no Chromium on this machine (apt-get install chromium)")
  page = screenshot.screenshot(out / "report.html", width=1000)
  assert page.shape[0] > 2000 and page.shape[1] == 1000  # the whole page, not one window
  assert screenshot.drawn_fraction(page) > 0.05
  tiles = screenshot.page_tiles(page, 1200)
  assert sum(len(t) for t in tiles) == len(page)
  # The figures are on the page: strongly coloured pixels (text alone is grey on white).
  colour = np.ptp(page.astype(np.int16), axis=-1) > 60
  assert colour.mean() > 0.01


def test_slide_titles_name_label_prediction_or_follow_up():
  table = pd.DataFrame(
    {"slide_id": ["s0", "s1"], "prob_0": [0.2, 0.9], "prob_1": [0.8, 0.1], "pred": [1, 0], "label": [0, 0]}
  )
  assert run_report.slide_title(table, 0, ["G2", "G3"]) == "s0: label G2, predicted G3 (p = 0.80)"
  survival = pd.DataFrame(
    {"slide_id": ["a", "b", "c"], "risk": [-2.0, -1.0, -3.0], "time": [100.0, 300.0, 50.0], "event": [1, 0, 1]}
  )
  assert run_report.slide_title(survival, 1, []) == ("b: censored at 300 days, predicted risk -1.000 (rank 1 of 3)")
