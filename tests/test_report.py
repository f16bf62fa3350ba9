"""Report figures (valid, non-trivial PNGs), survival statistics and the self-contained HTML report."""

from __future__ import annotations

import base64
import json
import re

import matplotlib.image as mpimg
import numpy as np
import pytest

from smml_jax.evaluate import figures, interpret, report

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_nontrivial_png(path, min_fraction=0.03):
  """A real PNG whose pixels vary and of which more than `min_fraction` differ from the background."""
  with open(path, "rb") as f:
    assert f.read(8) == _PNG_MAGIC, f"{path} is not a PNG"
  image = mpimg.imread(path)[..., :3]
  assert image.var() > 0, f"{path} is blank"
  background = image[0, 0]  # the saved figure's white facecolor
  differs = np.any(np.abs(image - background) > 1e-3, axis=-1)
  assert differs.mean() > min_fraction, f"{path}: only {differs.mean():.2%} of pixels are drawn"


def _survival_cohort(rng, n, separated):
  risk = rng.normal(size=n)
  if separated:
    scale = np.where(risk > np.median(risk), 150.0, 1500.0)
  else:
    scale = np.full(n, 600.0)
  time = rng.exponential(scale) + 1.0
  event = (rng.uniform(size=n) < 0.85).astype(np.int64)
  return risk, time, event


def test_slide_sampling_figure(tmp_path):
  rng = np.random.default_rng(0)
  n, s, groups = 20, 6, 4
  grid = rng.uniform(-1, s, size=(groups, 2, s, s))  # one slide, B*G = 4 rows
  points = np.asarray(interpret.grid_points_to_pixels(grid, n, s, groups))[0]
  attn = rng.dirichlet(np.ones(s * s), size=(1, groups, 30))
  mass = np.asarray(interpret.patch_mass(points[None], interpret.attention_mass(attn), n))[0]
  region = np.zeros((n, n))
  region[5:12, 3:9] = 1.0
  path = figures.plot_slide_sampling(
    tmp_path / "slide.png", region, points, points[::-1], mass, mass.T, "slide TCGA-XX"
  )
  assert path == tmp_path / "slide.png"
  assert_nontrivial_png(path)
  # Slide layout: a jittered lattice with some padding cells.
  rows, cols = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
  coords = np.stack([cols.ravel() * 256.0 + 3, rows.ravel() * 256.0 - 7], -1)
  coords[rng.uniform(size=n * n) < 0.2] = np.nan
  layout = figures.plot_slide_sampling(
    tmp_path / "layout.png", region, points, points, mass, mass, "layout", coords=coords
  )
  assert_nontrivial_png(layout)
  with pytest.raises(ValueError, match="mass_micro must be"):
    figures.plot_slide_sampling(tmp_path / "bad.png", region, points, points, mass, mass[:3], "bad")


def test_gene_importance_figure(tmp_path):
  rng = np.random.default_rng(1)
  tumour = interpret.top_genes(rng.normal(size=(6, 12)), [f"T{i}" for i in range(12)])
  micro = interpret.top_genes(rng.normal(size=(6, 30)), [f"M{i}" for i in range(30)])
  assert_nontrivial_png(figures.plot_gene_importance(tmp_path / "genes.png", tumour, micro, k=10))
  with pytest.raises(ValueError, match="lacks column"):
    figures.plot_gene_importance(tmp_path / "bad.png", tumour.drop(columns="mean_attribution"), micro)


def test_roc_and_confusion_figures(tmp_path):
  rng = np.random.default_rng(2)
  labels = rng.integers(0, 3, size=60)
  logits = rng.normal(size=(60, 3)) + 2.0 * np.eye(3)[labels]
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  names = ["astro", "oligo", "gbm"]
  assert_nontrivial_png(figures.plot_roc(tmp_path / "roc.png", labels, probs, names))
  cm = np.zeros((3, 3), np.int64)
  np.add.at(cm, (labels, probs.argmax(-1)), 1)
  assert_nontrivial_png(figures.plot_confusion(tmp_path / "cm.png", cm, names))
  # A class without positives still draws (AUC n/a) rather than crashing.
  assert_nontrivial_png(figures.plot_roc(tmp_path / "roc_missing.png", labels % 2, probs, names))
  with pytest.raises(ValueError, match="cm must be"):
    figures.plot_confusion(tmp_path / "bad.png", cm[:2], names)


def test_km_log_rank_separates_planted_groups(tmp_path):
  rng = np.random.default_rng(3)
  risk, time, event = _survival_cohort(rng, 120, separated=True)
  p_separated = figures.plot_km_risk_groups(tmp_path / "km.png", risk, time, event)
  assert_nontrivial_png(tmp_path / "km.png")
  assert p_separated < 1e-4
  p_values = [
    figures.plot_km_risk_groups(tmp_path / f"km_rand{i}.png", *_survival_cohort(rng, 120, separated=False))
    for i in range(3)
  ]
  assert np.median(p_values) > 0.05
  with pytest.raises(ValueError, match="one group empty"):
    figures.plot_km_risk_groups(tmp_path / "tied.png", np.zeros(10), time[:10], event[:10])


def test_time_dependent_auc(tmp_path):
  rng = np.random.default_rng(4)
  train_risk, train_time, train_event = _survival_cohort(rng, 200, separated=True)
  del train_risk
  risk, time, event = _survival_cohort(rng, 100, separated=True)
  times = np.quantile(time, [0.1, 0.3, 0.5, 0.7, 0.9])
  used, auc, mean_auc = figures.time_dependent_auc(risk, time, event, train_time, train_event, times)
  assert used.shape == auc.shape and used.size > 0
  assert mean_auc > 0.65
  _, _, random_auc = figures.time_dependent_auc(rng.normal(size=100), time, event, train_time, train_event, times)
  assert abs(random_auc - 0.5) < abs(mean_auc - 0.5)
  path = figures.plot_time_dependent_auc(tmp_path / "tdauc.png", risk, time, event, train_time, train_event, times)
  assert_nontrivial_png(path)
  with pytest.raises(ValueError, match="follow-up range"):
    figures.time_dependent_auc(risk, time, event, train_time, train_event, [time.max() * 10])


def test_training_curves_robust_to_missing_keys(tmp_path):
  lines = []
  for epoch in range(6):
    lines.append({"epoch": epoch, "split": "train", "loss": 1.0 / (epoch + 1), "lr": 1e-3 * 0.9**epoch})
    val = {"epoch": epoch, "split": "val", "loss": 1.2 / (epoch + 1) + 0.05, "auc": 0.5 + 0.07 * epoch}
    if epoch == 3:
      del val["auc"]  # a missing key
    lines.append(val)
  lines.append({"epoch": 5, "split": "test", "c_index": 0.66, "note": "final", "best": True})
  jsonl = tmp_path / "metrics.jsonl"
  jsonl.write_text("\n".join(json.dumps(r) for r in lines) + "\n\n")
  path = figures.plot_training_curves(tmp_path / "curves.png", jsonl)
  assert_nontrivial_png(path)
  frame = figures.read_metrics_jsonl(jsonl)
  assert set(frame["split"]) == {"train", "val", "test"}
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"epoch": 0, "loss": 1}\n{"epoch": 1, "loss"\n')
  with pytest.raises(ValueError, match=r"bad.jsonl line 2"):
    figures.plot_training_curves(tmp_path / "bad.png", bad)
  only_index = tmp_path / "index.jsonl"
  only_index.write_text('{"epoch": 0, "split": "val"}\n')
  with pytest.raises(ValueError, match="no numeric metric"):
    figures.plot_training_curves(tmp_path / "none.png", only_index)


def test_write_report_embeds_images_and_tables(tmp_path):
  rng = np.random.default_rng(5)
  genes = interpret.top_genes(rng.normal(size=(4, 8)), [f"G<{i}>" for i in range(8)], k=5)
  labels = rng.integers(0, 2, size=40)
  probs = np.stack([1 - labels * 0.6, labels * 0.6], -1) + 0.2 * rng.uniform(size=(40, 2))
  roc = figures.plot_roc(tmp_path / "figs" / "roc.png", labels, probs / probs.sum(-1, keepdims=True), ["a", "b"])
  sections = [
    report.Section(
      "Cohort", text="Measured on **val**.\n\n- micro ratio `1.8`\n- AUC 0.9", tables={"top genes": genes}, images=[roc]
    ),
    report.Section("Empty section"),
  ]
  path = report.write_report(tmp_path / "run", sections, title="run 1")
  assert path == tmp_path / "run" / "report.html"
  doc = path.read_text()
  uris = re.findall(r'src="data:image/png;base64,([^"]+)"', doc)
  assert len(uris) == 1
  assert base64.b64decode(uris[0]) == roc.read_bytes()
  assert "<caption>top genes</caption>" in doc and doc.count("<tr") == len(genes) + 1
  escaped = [name.replace("<", "&lt;").replace(">", "&gt;") for name in genes["gene"]]
  positions = [doc.find(f"<td>{name}</td>") for name in escaped]  # escaped, rows in rank order
  assert min(positions) > 0 and positions == sorted(positions)
  assert "<strong>val</strong>" in doc and "<li>micro ratio <code>1.8</code></li>" in doc
  assert "<h2>Empty section</h2>" in doc
  assert not re.search(r'src="(?!data:)', doc)  # self-contained
  with pytest.raises(ValueError, match="does not exist"):
    report.write_report(tmp_path / "run2", [report.Section("x", images=[tmp_path / "missing.png"])])


@pytest.fixture
def drawn(monkeypatch):
  """The matplotlib figures the plot functions save, kept open for inspection."""
  figs = []
  save = figures._common._save  # every figure family writes through it

  def keep(fig, path):
    figs.append(fig)
    fig.savefig(path, dpi=40)
    return path

  monkeypatch.setattr(figures._common, "_save", keep)
  yield figs
  monkeypatch.setattr(figures._common, "_save", save)
  import matplotlib.pyplot as plt

  for fig in figs:
    plt.close(fig)


def _texts(fig):
  import matplotlib.text

  return [t.get_text() for t in fig.findobj(matplotlib.text.Text) if t.get_text()]


def test_slide_figure_ticks_regions_one_scale_and_outside_note(tmp_path, drawn):
  n = 10
  points = np.stack(np.meshgrid(np.linspace(-2, 9, 4), np.linspace(0, 9, 4), indexing="ij"), -1)
  points = points.reshape(1, 16, 2).repeat(2, axis=0)  # (G=2, P=16, 2), a column at row -2
  mass_t = np.zeros((n, n))
  mass_t[2, 3] = 5.0
  mass_m = np.full((n, n), 0.1)
  immune = np.zeros((n, n))
  immune[4:8, 4:8] = 1
  figures.plot_slide_sampling(
    tmp_path / "s.png",
    immune,
    points,
    points,
    mass_t,
    mass_m,
    "slide A: label G3, predicted G4 (p = 0.71)",
    regions={"immune": immune},
  )
  (fig,) = drawn
  mass_images = [im for ax in fig.axes for im in ax.get_images() if im.get_cmap().name == "magma"]
  assert len(mass_images) == 2
  assert {im.get_clim() for im in mass_images} == {(0.0, 5.0)}  # one colour scale
  pts_ax = fig.axes[0]
  assert pts_ax.get_xlabel() == "patch column" and pts_ax.get_ylabel() == "patch row"
  ticks = pts_ax.get_xticks()
  assert np.all(ticks == np.round(ticks)) and ticks.min() >= 0 and ticks.max() <= n - 1
  assert any(
    ax.collections and "immune" in ax.get_legend_handles_labels()[1]
    for ax in fig.axes
    if ax.get_images() and ax.get_images()[0].get_cmap().name == "magma"
  )
  texts = " ".join(_texts(fig))
  assert "label G3, predicted G4" in texts
  assert "25% of the sampling points lie outside the grid" in texts  # 4 of 16 at row -2
  drawn.clear()
  inside = np.clip(points, 0, n - 1)
  figures.plot_slide_sampling(tmp_path / "in.png", immune, inside, inside, mass_t, mass_m, "in")
  assert "outside the grid" not in " ".join(_texts(drawn[0]))


def test_gene_importance_legend_and_spread(tmp_path, drawn):
  rng = np.random.default_rng(1)
  spread = rng.normal(size=(6, 12)) * np.linspace(0.1, 2, 12)
  tumour = interpret.top_genes(spread, [f"T{i}" for i in range(12)])
  assert np.allclose(tumour.set_index("gene").loc["T11", "std_abs_attribution"], np.abs(spread[:, 11]).std(ddof=1))
  figures.plot_gene_importance(tmp_path / "g.png", tumour, tumour, k=5)
  (fig,) = drawn
  labels = fig.axes[0].get_legend_handles_labels()[1]
  assert any("positive" in l for l in labels) and any("negative" in l for l in labels)
  assert fig.axes[0].containers and any(type(c).__name__ == "ErrorbarContainer" for c in fig.axes[0].containers)


def test_km_censoring_ticks_numbers_at_risk_and_bands(tmp_path, drawn):
  rng = np.random.default_rng(3)
  risk, time, event = _survival_cohort(rng, 80, separated=True)
  figures.plot_km_risk_groups(tmp_path / "km.png", risk, time, event)
  (fig,) = drawn
  ax = fig.axes[0]
  assert len([c for c in ax.collections if type(c).__name__ in ("PolyCollection", "FillBetweenPolyCollection")]) == 2
  censored = [line for line in ax.get_lines() if line.get_marker() == "|" and len(line.get_xdata())]
  high = figures.risk_groups(risk)
  assert sorted(len(line.get_xdata()) for line in censored) == sorted(
    [int((~event.astype(bool) & high).sum()), int((~event.astype(bool) & ~high).sum())]
  )
  ticks = figures.km_tick_times(time)
  texts = _texts(fig)
  assert any("number at risk" in t for t in texts)
  for group in (high, ~high):  # one row of counts per group, under the axis
    row = figures.numbers_at_risk(time[group], ticks)
    assert row[0] == group.sum() and np.all(np.diff(row) <= 0)
    assert " ".join(str(c) for c in row) in " ".join(texts)


def test_training_curves_mark_the_selected_epoch_and_drop_empty_panels(tmp_path, drawn):
  lines = []
  for epoch in range(4):
    lines.append(
      {
        "epoch": epoch,
        "split": "train",
        "loss": 1.0 / (epoch + 1),
        "slides_per_s": 50.0 + epoch,
        **({"compile_s": 12.5} if epoch == 0 else {}),
      }
    )
    for split in ("val", "test"):
      lines.append({"epoch": epoch, "split": split, "auc": 0.6 + 0.05 * epoch, "num_examples": 40})
  jsonl = tmp_path / "metrics.jsonl"
  jsonl.write_text("\n".join(json.dumps(r) for r in lines))
  figures.plot_training_curves(tmp_path / "c.png", jsonl, best_epoch=2)
  (fig,) = drawn
  titles = [ax.get_title() for ax in fig.axes if ax.axison]
  assert "num_examples" not in titles and "compile_s" not in titles
  assert any("compilation" in t and "12.5" in t for t in titles)  # beside slides/s, not in it
  for ax in fig.axes:
    if ax.axison:
      assert any(list(line.get_xdata()) == [2, 2] for line in ax.get_lines()), ax.get_title()


def test_outside_fraction_counts_points_that_read_only_padding():
  points = np.array([[-0.5, 3.0], [15.5, 0.0], [-1.0, 2.0], [4.0, 16.2], [3.0, 3.0]])
  assert figures.outside_fraction(points, 16) == pytest.approx(0.4)  # border points are inside
