"""Interpretability report of a trained run (what `smml-report` runs).

Runs the run's best checkpoint on one of its stored splits (default: test) of its own cohort and
writes, under DIR/report/ (or `out_dir`): per-slide figures of the tumour and microenvironment
sampling points (per offset group) beside the attention mass each patch receives; gene importance
per subspace (`gene_importance`) as bar charts and gene_importance.csv; the cohort figures
(`cohort_figures`); the training curves of metrics.jsonl; report_metrics.json; and one
self-contained report.html. When the cohort has planted regions, the sampling concentrations on
them (`sampling.region_concentrations`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from smml_jax.data.bags import grid_positions
from smml_jax.data.spec import load_cohort
from smml_jax.evaluate import ablation, figures
from smml_jax.evaluate import inference as inf
from smml_jax.evaluate.cohort_figures import cohort_figures
from smml_jax.evaluate.gene_importance import gene_importance, gene_importance_csv
from smml_jax.evaluate.report import Section, write_report
from smml_jax.evaluate.sampling import (
  SUBSPACE_TITLES,
  immune_sentence,
  region_concentrations,
  sampling_geometry,
  sampling_use,
  sampling_use_table,
  sampling_use_text,
)
from smml_jax.train import run_dir as run_dir_lib


@dataclasses.dataclass(frozen=True)
class ReportOptions:
  split: str = "test"
  checkpoint: str = "best"
  n_slides: int = 4  # per-slide figures
  ig_slides: int = 32  # slides the gene importances average over
  ig_steps: int = 32
  alpha_batch_size: Optional[int] = 8
  top_k: int = 20
  data_dir: Optional[str] = None


def _section(title: str, text: str = "", tables=None, images=()) -> Section:
  return Section(title=title, text=text, tables=tables or {}, images=list(images))


def _slide_background(outputs: Mapping[str, np.ndarray], i: int, n: int) -> tuple[np.ndarray, str]:
  if "immune_mask" in outputs:
    image = 2.0 * outputs["immune_mask"][i] + (outputs["tumour_mask"][i] if "tumour_mask" in outputs else 0.0)
    return image.reshape(n, n).astype(np.float64), "background: immune (dark), tumour (mid)"
  return outputs["patch_norm"][i].reshape(n, n).astype(np.float64), "background: patch feature norm"


def _slide_regions(outputs: Mapping[str, np.ndarray], i: int, n: int) -> dict[str, np.ndarray]:
  """The slide's known regions as (n, n) masks (the synthetic cohort's planted ones), else {}."""
  return {
    name: np.asarray(outputs[f"{name}_mask"][i], np.float64).reshape(n, n)
    for name in ("immune", "tumour")
    if f"{name}_mask" in outputs
  }


def slide_title(table: pd.DataFrame, i: int, class_names: Sequence[str]) -> str:
  """'<slide>: label X, predicted Y (p = ..)' or, for survival, the follow-up and predicted risk."""
  row = table.iloc[i]
  head = str(row["slide_id"])
  if "risk" in table.columns:
    known = ""
    if "time" in table.columns and np.isfinite(row["time"]) and row["time"] >= 0:
      known = f"{'died' if int(row['event']) else 'censored'} at {row['time']:.0f} days, "
    rank = int(table["risk"].rank(ascending=False, method="min").iloc[i])
    return f"{head}: {known}predicted risk {row['risk']:.3f} (rank {rank} of {len(table)})"
  pred = int(row["pred"])
  prob = float(row[f"prob_{pred}"])
  label = ""
  if "label" in table.columns and int(row["label"]) >= 0:
    label = f"label {class_names[int(row['label'])]}, "
  return f"{head}: {label}predicted {class_names[pred]} (p = {prob:.2f})"


def _slide_coords(outputs: Mapping[str, np.ndarray], i: int, n: int) -> Optional[np.ndarray]:
  """The slide layout (n*n, 2) when the cohort has real patch coordinates, else None."""
  coords = np.asarray(outputs["coords"][i], np.float64)
  if np.allclose(coords, grid_positions(n)):
    return None
  coords = coords.copy()
  empty = ~np.asarray(outputs["tissue_mask"][i], bool) | np.any(coords < 0, axis=1)
  coords[empty] = np.nan
  return coords


def build_report(
  run_dir: str | pathlib.Path,
  options: ReportOptions = ReportOptions(),
  out_dir: Optional[str | pathlib.Path] = None,
  log: Callable[[str], None] = print,
  progress: bool = True,
) -> dict[str, Any]:
  """Writes the report of a run (see the module docstring); returns report_metrics.json's content."""
  run_dir = pathlib.Path(run_dir)
  started = time.perf_counter()
  stages = iter(range(1, 6))

  def stage(what: str) -> None:  # the report takes a minute on CPU: say what it is doing
    log(f"report [{next(stages)}/5] {what} ({time.perf_counter() - started:.0f}s)")

  def bar(batches, what: str):
    return tqdm(batches, total=len(batches), desc=what, unit="batch", leave=False, disable=not progress)

  run = inf.load_run(run_dir, options.checkpoint)
  out = pathlib.Path(out_dir) if out_dir else run.run_dir / run_dir_lib.REPORT_DIR
  out.mkdir(parents=True, exist_ok=True)
  cohort = load_cohort(run.config.data.data, options.data_dir or run.config.data.data_dir)
  indices = inf.split_indices(run, cohort, options.split)
  stage(f"running the model on {len(indices)} {options.split} slides of {cohort.path}")
  outputs = inf.run_model(run, bar(inf.cohort_batches(run, cohort, indices), "model"), fields=inf.OUTPUT_FIELDS)
  table = inf.prediction_table(run, outputs)
  table.to_csv(out / f"predictions_{options.split}.csv", index=False)
  n = run.grid_side
  metrics: dict[str, Any] = {
    "run_dir": str(run_dir),
    "task": run.task,
    "model": run.config.model,
    "checkpoint": run.checkpoint,
    "epoch": run.epoch,
    "split": options.split,
    "n_slides": int(len(table)),
  }
  sections = [
    _section(
      "Run",
      f"Task `{run.task}`, model `{run.config.model}`, "
      f"{run.checkpoint} checkpoint (epoch {run.epoch}), evaluated on the "
      f"{len(table)} slides of the `{options.split}` split of `{cohort.path}`.",
    )
  ]

  # Cohort level.
  stage("cohort figures and training curves")
  train = cohort.slides[cohort.slides["slide_id"].astype(str).isin(run.splits.get("train", []))]
  train = train[train["surv_time"] >= 0]
  cohort_images, cohort_metrics, note = cohort_figures(
    table,
    out,
    task=run.task_spec,
    train_time=train["surv_time"].to_numpy(),
    train_event=train["event"].to_numpy(),
    cut_points=run.preprocessor.surv_cuts,
  )
  metrics["cohort"] = cohort_metrics
  scalar = {k: v for k, v in cohort_metrics.items() if not isinstance(v, dict)}
  if "time_dependent_auc" in cohort_metrics:
    scalar["mean_time_dependent_auc"] = cohort_metrics["time_dependent_auc"]["mean_auc"]
  tables = {"cohort metrics": pd.DataFrame([scalar])} if scalar else {}
  sections.append(_section("Cohort", note, tables, cohort_images))

  metrics_path = run.run_dir / run_dir_lib.METRICS_FILE
  if metrics_path.is_file() and metrics_path.read_text().strip():
    curves = figures.plot_training_curves(
      out / "training_curves.png", metrics_path, best_epoch=run.epoch if run.checkpoint == "best" else None
    )
    sections.append(
      _section(
        "Training and validation curves",
        "From `metrics.jsonl`; the dashed line is the epoch selected on validation.",
        images=[curves],
      )
    )

  # Sampling points and attention mass.
  geometry = sampling_geometry(outputs, n)
  stage(f"sampling-point figures of {min(options.n_slides, len(table))} slides and their ablations")
  if geometry:
    concentration = region_concentrations(geometry, outputs, n)
    metrics["region_concentration"] = concentration
    slide_images = []
    for i in range(min(options.n_slides, len(table))):
      background, caption = _slide_background(outputs, i, n)
      slide_images.append(
        figures.plot_slide_sampling(
          out / f"slide_{i:02d}_sampling.png",
          background,
          geometry["tumour"]["points"][i],
          geometry["micro"]["points"][i],
          geometry["tumour"]["patch_mass"][i],
          geometry["micro"]["patch_mass"][i],
          title=f"{slide_title(table, i, run.class_names)}\n({caption})",
          coords=_slide_coords(outputs, i, n),
          regions=_slide_regions(outputs, i, n),
        )
      )
    text = (
      "Left: each branch's deformable sampling points, one colour per offset group; right: "
      "the attention mass each patch receives (per-point mass summed over queries and the "
      "group's heads, shared among the sampled patches with the bilinear weights), both "
      "branches on one colour scale, known regions as contours. Points outside the grid read "
      "only zero padding (no tissue); the figure says how many there are."
    )
    conc_tables = {}
    if concentration:
      text += (
        "\n\nRegion concentration = sampling mass inside a planted region / (mass on the "
        "grid x the region's area fraction), pooled over slides; chance = 1. `<branch>_on_` "
        "counts the sampling points, `<branch>_attention_on_` weights each point by the "
        "attention mass its key receives; `lattice_on_` is the undeformed lattice and "
        "`_mismatched` scores each slide on another slide's region (content-blind nulls)."
      )
      if "micro_over_tumour_on_immune" in concentration:
        text += f" **{immune_sentence(concentration)}**"
      conc_tables["region concentration (chance = 1)"] = pd.DataFrame(
        [{"measure": k, "value": v} for k, v in concentration.items()]
      )
    sections.append(_section("Sampling points and attention mass per slide", text, conc_tables, slide_images))
    if ablation.supports(run.params):
      use = sampling_use(run, lambda: bar(inf.cohort_batches(run, cohort, indices), "ablation"), table, outputs)
      metrics["sampling_use"] = use
      sections.append(
        _section(
          "Does the prediction use the sampling points?",
          sampling_use_text(use),
          {"sampling use": sampling_use_table(use)},
        )
      )
  else:
    sections.append(
      _section(
        "Sampling points",
        f"Model `{run.config.model}` has no 2D deformable sampling grids; no per-slide sampling figures.",
      )
    )

  # Gene importance.
  stage(
    f"gene importance: integrated gradients ({options.ig_steps} steps) over "
    f"{min(options.ig_slides, len(indices))} slides"
  )
  tables = gene_importance(
    run.spec.module.apply,
    run.params,
    bar(inf.cohort_batches(run, cohort, indices), "integrated gradients"),
    run.gene_names,
    task=run.task_spec,
    steps=options.ig_steps,
    alpha_batch_size=options.alpha_batch_size,
    max_slides=options.ig_slides,
  )
  csv = gene_importance_csv(tables, out / "gene_importance.csv")
  bars = figures.plot_gene_importance(out / "gene_importance.png", tables["tumour"], tables["micro"], k=options.top_k)
  n_ig = min(options.ig_slides, len(indices))
  metrics["top_genes"] = {s: t["gene"].head(options.top_k).tolist() for s, t in tables.items()}
  target = run.task_spec.attribution_target_name
  sections.append(
    _section(
      "Gene importance",
      f"Integrated gradients ({options.ig_steps} steps, baseline = training mean) of the {target} "
      f"w.r.t. the normalised gene inputs, mean |attribution| over {n_ig} slides (whiskers: "
      f"+- its std across the slides); red bars: positive mean attribution, blue: negative. "
      f"All genes: `{csv.name}`.",
      {f"top {options.top_k} {SUBSPACE_TITLES[s]} genes": t.head(options.top_k) for s, t in tables.items()},
      [bars],
    )
  )

  stage("writing report.html")
  (out / "report_metrics.json").write_text(json.dumps(_finite(metrics), indent=2))
  write_report(out, sections, title=f"smml-jax report: {run_dir.name}")
  log(f"report: wrote {out / 'report.html'} in {time.perf_counter() - started:.0f}s")
  return metrics


def _finite(value):
  """NaN/inf -> None so the JSON stays standard."""
  if isinstance(value, dict):
    return {k: _finite(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_finite(v) for v in value]
  if isinstance(value, (float, np.floating)):
    return float(value) if math.isfinite(value) else None
  if isinstance(value, np.integer):
    return int(value)
  return value
