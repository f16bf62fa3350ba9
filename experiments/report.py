"""Interpretability report of a trained run: `python -m experiments.report --run DIR`.

Runs the run's best checkpoint on one of its stored splits (default: test) of its own cohort and
writes, under DIR/report/ (or --out): per-slide figures of the tumour and microenvironment
sampling points (per offset group) beside the attention mass each patch receives; gene importance
per subspace (integrated gradients of the predicted class probability, or of the risk, w.r.t. the
normalised gene inputs, from the training mean) as bar charts and gene_importance.csv; ROC curves
and the confusion matrix (classification) or Kaplan-Meier curves of the median-split risk groups
with the log-rank p-value and the time-dependent AUC (survival); the training curves of
metrics.jsonl; report_metrics.json; and one self-contained report.html.

When the cohort has planted regions (the synthetic cohort's `immune_mask`), it measures how much
more often each branch's sampling points land in them than chance, and how much more of its
attention mass does (`region_concentrations`), beside two content-blind nulls: the undeformed
lattice and the same points scored on another slide's regions.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import sys
import time
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

SUBSPACE_TITLES = {"tumour": "tumour", "micro": "microenvironment"}


# ----------------------------------------------------------------------------- gene importance


def gene_importance(apply_fn: Callable[..., Any], params: Any, batches: Iterable[Mapping],
                    gene_names: Mapping[str, Sequence[str]], *, task, steps: int = 32,
                    alpha_batch_size: Optional[int] = None,
                    max_slides: Optional[int] = None) -> dict[str, pd.DataFrame]:
  """Integrated-gradients gene ranking per subspace over the slides of `batches`.

  The explained scalar is the probability of the class predicted at the real input
  (classification) or the risk -sum_k S_k (survival); the baseline is 0 for every normalised gene
  (the training mean). Rankings use the mean |attribution| over the real slides.

  Args:
    apply_fn: `module.apply`, called as apply_fn({'params': params}, batch, train=False).
    params: the model parameters.
    batches: preprocessed batches with 'patches', 'genes_tumour', 'genes_micro' and 'mask' (B,).
    gene_names: {'tumour': Gt names, 'micro': Gm names} in input order.
    task: the run's `smml_jax.tasks.Task` (what the logits mean).
    steps: trapezoid intervals of the path integral.
    alpha_batch_size: alphas evaluated at once (None: all; lower it to save memory).
    max_slides: stop after this many real slides.

  Returns:
    {'tumour': DataFrame, 'micro': DataFrame} of `interpret.top_genes` (every gene, ranked) over
    the first min(max_slides, number of slides) slides.
  """
  import jax
  import jax.numpy as jnp
  from smml_jax.evaluate import interpret

  @jax.jit
  def attribute(p, batch):
    return interpret.model_gene_attributions(apply_fn, {"params": p}, batch, task,
                                             steps=steps, alpha_batch_size=alpha_batch_size)

  chunks: dict[str, list[np.ndarray]] = {k: [] for k in interpret.GENE_INPUTS}
  seen = 0
  for batch in batches:
    mask = np.asarray(batch["mask"], bool)
    inputs = {k: jnp.asarray(batch[k]) for k in ("patches", *interpret.GENE_INPUTS)}
    out = attribute(params, inputs)
    for k in interpret.GENE_INPUTS:
      chunks[k].append(np.asarray(out[k], np.float64)[mask])
    seen += int(mask.sum())
    if max_slides is not None and seen >= max_slides:
      break
  if not seen:
    raise ValueError("gene_importance: no slide to attribute")
  tables = {}
  for s in ("tumour", "micro"):
    attributions = np.concatenate(chunks[f"genes_{s}"])[:max_slides]
    tables[s] = interpret.top_genes(attributions, list(gene_names[s]))
  return tables


def gene_importance_csv(tables: Mapping[str, pd.DataFrame], path: pathlib.Path) -> pathlib.Path:
  """Every gene of both subspaces, ranked within its subspace: subspace, rank, gene, ...."""
  frame = pd.concat([t.assign(subspace=s) for s, t in tables.items()], ignore_index=True)
  columns = ["subspace", "rank", "gene", "mean_abs_attribution", "mean_attribution",
             "std_abs_attribution"]
  frame = frame[[c for c in columns if c in frame.columns]]
  frame.to_csv(path, index=False)
  return path


# ----------------------------------------------------------------------------- sampling geometry


def sampling_geometry(outputs: Mapping[str, np.ndarray], grid_side: int) -> dict[str, Any]:
  """Deformable sampling points and attention mass per patch, per subspace.

  Args:
    outputs: `inference.run_model` fields: grid_<s> (n, G, 2, S, S) and attn_<s> (n, H, M), H a
      multiple of G (heads of one offset group are contiguous), M = S * S.
    grid_side: n of the patch grid.

  Returns:
    {s: {'points': (n, G, M, 2) (row, col) pixels, 'point_mass': (n, G, M) attention mass per point
    (summed over the group's heads and all queries), 'patch_mass': (n, grid_side, grid_side)}}, or
    {} when the model has no 2D sampling grids (a baseline or the 1D variant).
  """
  from smml_jax.evaluate import interpret
  geometry = {}
  for s in ("tumour", "micro"):
    grid, attn = outputs.get(f"grid_{s}"), outputs.get(f"attn_{s}")
    if grid is None or attn is None or grid.ndim != 5 or grid.shape[2] != 2:
      return {}
    n, groups, _, side, _ = grid.shape
    points = np.asarray(interpret.grid_points_to_pixels(grid.reshape(n * groups, 2, side, side),
                                                        grid_side, side, groups))
    heads, m = attn.shape[1], attn.shape[2]
    if heads % groups or m != side * side:
      raise ValueError(f"sampling_geometry: attention mass {attn.shape} does not fit {groups} "
                       f"offset groups of {side}x{side} points")
    point_mass = attn.reshape(n, groups, heads // groups, m).sum(axis=2)
    patch = np.asarray(interpret.patch_mass(points, point_mass, grid_side))
    geometry[s] = {"points": points, "point_mass": point_mass, "patch_mass": patch}
  return geometry


def region_concentrations(geometry: Mapping[str, Mapping[str, np.ndarray]],
                          outputs: Mapping[str, np.ndarray], grid_side: int) -> dict[str, float]:
  """Concentration of each branch's sampling on each planted region (chance = 1), with two nulls.

  For the regions the cohort carries (`immune_mask`, `tumour_mask`) and s in (tumour, micro):
    '<s>_on_<region>': the sampling POINTS (each with its bilinear weights);
    '<s>_attention_on_<region>': the ATTENTION MASS per patch (each point weighted by the mass
      its key receives), i.e. where the branch looks, not only where its points sit;
    'lattice_on_<region>': the undeformed lattice (offsets zero) on the same slides; it is not 1
      because the lattice puts part of its mass on the grid's border rows/columns;
    '<s>_on_<region>_mismatched', '<s>_attention_on_<region>_mismatched': each slide's points /
      mass scored on the NEXT slide's region (needs >= 2 slides): what content-blind placement
      (e.g. drifting off the border) gives with the same geometry;
  and 'micro_over_tumour_on_immune' = micro_on_immune / tumour_on_immune.
  """
  from smml_jax.evaluate import interpret

  def defined(fn, *args) -> Optional[float]:
    try:
      return fn(*args)
    except interpret.UndefinedRatio:  # an empty denominator: not available
      return None

  result: dict[str, Optional[float]] = {}
  if not geometry:
    return result
  for region in ("immune", "tumour"):
    mask = outputs.get(f"{region}_mask")
    if mask is None:
      continue
    mask = np.asarray(mask, np.float64).reshape(len(mask), -1)
    others = np.roll(mask, 1, axis=0) if len(mask) > 1 else None
    for s in ("tumour", "micro"):
      points = geometry[s]["points"]
      result[f"{s}_on_{region}"] = defined(interpret.region_concentration, points, mask, grid_side)
      result[f"{s}_attention_on_{region}"] = defined(interpret.mass_concentration,
                                                     geometry[s]["patch_mass"], mask)
      if others is not None:
        result[f"{s}_on_{region}_mismatched"] = defined(interpret.region_concentration, points,
                                                        others, grid_side)
        result[f"{s}_attention_on_{region}_mismatched"] = defined(
            interpret.mass_concentration, geometry[s]["patch_mass"], others)
    batch, groups, m, _ = geometry["micro"]["points"].shape
    side = int(round(m ** 0.5))
    lattice = interpret.grid_points_to_pixels(interpret.lattice_grid(batch * groups, side),
                                              grid_side, side, groups)
    result[f"lattice_on_{region}"] = defined(interpret.region_concentration, lattice, mask,
                                             grid_side)
  if "micro_on_immune" in result:
    micro, tumour = result["micro_on_immune"], result["tumour_on_immune"]
    result["micro_over_tumour_on_immune"] = (
        micro / tumour if micro is not None and tumour is not None and tumour > 0 else None)
  return result


def sampling_use(run, batches: Callable[[], Iterable[Mapping]], table: pd.DataFrame,
                 outputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """The headline metric with each branch's offsets zeroed / attention removed (`ablation`), and
  each branch's offset statistics: whether the figures' sampling points carry the prediction."""
  from smml_jax.evaluate import ablation
  use = ablation.ablation_metrics(run, batches, table)
  use["offsets"] = {s: ablation.offset_statistics(outputs[f"grid_{s}"], run.grid_side)
                    for s in ablation.BRANCHES}
  return use


def sampling_use_table(use: Mapping[str, Any]) -> pd.DataFrame:
  rows = []
  for s in use["offsets"]:
    off = use["offsets"][s]
    rows.append({"branch": SUBSPACE_TITLES[s], f"{use['metric']} offsets zeroed":
                 use[f"{s}_offsets_zero"], f"{use['metric']} attention removed":
                 use[f"{s}_attention_off"], "mean |offset| (patches)": off["mean_abs_offset"],
                 "between-slide std (patches)": off["between_slide_std"],
                 "content fraction": off["content_fraction"]})
  return pd.DataFrame(rows)


def sampling_use_text(use: Mapping[str, Any]) -> str:
  return (f"The same slides scored again with one part of one branch switched off ({use['metric']} "
          f"of the trained model: {use['trained']:.4f}). *Offsets zeroed*: the branch samples the "
          "undeformed lattice; *attention removed*: the attention output is zero and only the "
          "branch's residual path (mean of its fused tokens) is left. A branch whose metric does not "
          "move does not use where its points sit, whatever the figures show. *Between-slide std* "
          "is how much each offset varies from slide to slide; *content fraction* = that std / the "
          "RMS offset (0: one fixed shift on every slide, content-blind).")


def _times(value: Optional[float], suffix: str = "x") -> str:
  return "n/a" if value is None else f"{value:.3f}{suffix}"


def immune_sentence(concentration: Mapping[str, Optional[float]]) -> str:
  """One sentence with both immune-region measures of both branches and the lattice baseline;
  a measure with an empty denominator reads 'n/a'."""
  c = concentration
  text = (f"Immune regions, chance = 1: microenvironment branch sampling points "
          f"{_times(c['micro_on_immune'])}, attention-weighted "
          f"{_times(c['micro_attention_on_immune'])}; tumour branch points "
          f"{_times(c['tumour_on_immune'])}, attention-weighted "
          f"{_times(c['tumour_attention_on_immune'])}; micro/tumour point ratio "
          f"{_times(c['micro_over_tumour_on_immune'], '')}; undeformed lattice "
          f"{_times(c['lattice_on_immune'])}")
  if "micro_on_immune_mismatched" in c:
    text += (f"; micro points on another slide's immune regions "
             f"{_times(c['micro_on_immune_mismatched'])} (attention-weighted "
             f"{_times(c['micro_attention_on_immune_mismatched'])})")
  return text + "."


def _slide_background(outputs: Mapping[str, np.ndarray], i: int, n: int) -> tuple[np.ndarray, str]:
  if "immune_mask" in outputs:
    image = 2.0 * outputs["immune_mask"][i] + (outputs["tumour_mask"][i] if "tumour_mask" in
                                               outputs else 0.0)
    return image.reshape(n, n).astype(np.float64), "background: immune (dark), tumour (mid)"
  return outputs["patch_norm"][i].reshape(n, n).astype(np.float64), "background: patch feature norm"


def _slide_regions(outputs: Mapping[str, np.ndarray], i: int, n: int) -> dict[str, np.ndarray]:
  """The slide's known regions as (n, n) masks (the synthetic cohort's planted ones), else {}."""
  return {name: np.asarray(outputs[f"{name}_mask"][i], np.float64).reshape(n, n)
          for name in ("immune", "tumour") if f"{name}_mask" in outputs}


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
  from smml_jax.data.bags import grid_positions
  coords = np.asarray(outputs["coords"][i], np.float64)
  if np.allclose(coords, grid_positions(n)):
    return None
  coords = coords.copy()
  empty = ~np.asarray(outputs["tissue_mask"][i], bool) | np.any(coords < 0, axis=1)
  coords[empty] = np.nan
  return coords


# ----------------------------------------------------------------------------- the report


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


def _section(title: str, text: str = "", tables=None, images=()):
  from smml_jax.evaluate.report import Section
  return Section(title=title, text=text, tables=tables or {}, images=list(images))


def cohort_figures(table: pd.DataFrame, out: pathlib.Path, *, task,
                   train_time: Optional[np.ndarray] = None,
                   train_event: Optional[np.ndarray] = None,
                   cut_points: Sequence[float] = ()) -> tuple[list[pathlib.Path], dict, str]:
  """Cohort-level figures of a prediction table (`inference.prediction_table`).

  Classification (needs `label`, `prob_<k>`): roc.png, confusion.png and the task metrics.
  Survival (needs `risk`, `time`, `event`): kaplan_meier.png (median-split risk groups, log-rank
  p-value) and time_dependent_auc.png at the survival cut points and the quintiles of the times,
  with the censoring distribution from the training split (`train_time`, `train_event`).

  Args:
    task: the run's `smml_jax.tasks.Task` (its `kind` picks the figures, its class names label them).

  Returns:
    (images written, metrics, a note on what could not be drawn).
  """
  return COHORT_FIGURES[task.kind](table, out, task=task, train_time=train_time,
                                   train_event=train_event, cut_points=cut_points)


def _classification_figures(table, out, *, task, **unused):
  from smml_jax.evaluate import figures
  from smml_jax.metrics import evaluation as metrics_lib
  del unused
  class_names = task.class_names
  if "label" not in table.columns:
    return [], {}, "The slides carry no label for this task; no ROC / confusion matrix."
  k = len(class_names)
  images = []
  probs = table[[f"prob_{j}" for j in range(k)]].to_numpy()
  labels = table["label"].to_numpy()
  images.append(figures.plot_roc(out / "roc.png", labels, probs, class_names))
  m = metrics_lib.classification_metrics(labels, probs, k)
  images.append(figures.plot_confusion(out / "confusion.png", np.asarray(m["confusion_matrix"]),
                                       class_names))
  metrics = {key: v for key, v in m.items() if v is None or isinstance(v, (int, float))}
  return images, metrics, ""


def _survival_figures(table, out, *, task, train_time, train_event, cut_points):
  from smml_jax.evaluate import figures
  del task
  images, notes, metrics = [], [], {}
  if "time" not in table.columns:
    return [], {}, "The slides carry no survival times; no Kaplan-Meier / time-dependent AUC."
  risk, time, event = (table[c].to_numpy() for c in ("risk", "time", "event"))
  try:
    metrics["logrank_p"] = figures.plot_km_risk_groups(out / "kaplan_meier.png", risk, time, event)
    images.append(out / "kaplan_meier.png")
  except ValueError as e:
    notes.append(f"Kaplan-Meier: {e}.")
  if train_time is not None and train_event is not None:
    times = np.unique(np.concatenate([np.asarray(cut_points, np.float64),
                                      np.quantile(time, [0.2, 0.4, 0.6, 0.8])]))
    try:
      used, auc, mean_auc = figures.time_dependent_auc(risk, time, event, train_time, train_event,
                                                       times)
      images.append(figures.plot_time_dependent_auc(out / "time_dependent_auc.png", risk, time,
                                                    event, train_time, train_event, times))
      metrics["time_dependent_auc"] = {"times": used.tolist(), "auc": auc.tolist(),
                                       "mean_auc": mean_auc}
    except ValueError as e:
      notes.append(f"Time-dependent AUC: {e}.")
  return images, metrics, " ".join(notes)


COHORT_FIGURES = {"classification": _classification_figures, "survival": _survival_figures}


def build_report(run_dir: str | pathlib.Path, options: ReportOptions = ReportOptions(),
                 out_dir: Optional[str | pathlib.Path] = None,
                 log: Callable[[str], None] = print, progress: bool = True) -> dict[str, Any]:
  """Writes the report of a run (see the module docstring); returns report_metrics.json's content."""
  from smml_jax.data.spec import load_cohort
  from smml_jax.evaluate import ablation, figures, inference as inf
  from smml_jax.evaluate.report import write_report
  from smml_jax.train import run_dir as run_dir_lib

  run_dir = pathlib.Path(run_dir)
  started = time.perf_counter()
  stages = iter(range(1, 6))

  def stage(what: str) -> None:  # the report takes a minute on CPU: say what it is doing
    log(f"report [{next(stages)}/5] {what} ({time.perf_counter() - started:.0f}s)")

  def bar(batches, what: str):
    return tqdm(batches, total=len(batches), desc=what, unit="batch", leave=False,
                disable=not progress)

  run = inf.load_run(run_dir, options.checkpoint)
  out = pathlib.Path(out_dir) if out_dir else run.run_dir / run_dir_lib.REPORT_DIR
  out.mkdir(parents=True, exist_ok=True)
  cohort = load_cohort(run.config.data.data, options.data_dir or run.config.data.data_dir)
  indices = inf.split_indices(run, cohort, options.split)
  stage(f"running the model on {len(indices)} {options.split} slides of {cohort.path}")
  outputs = inf.run_model(run, bar(inf.cohort_batches(run, cohort, indices), "model"),
                          fields=inf.OUTPUT_FIELDS)
  table = inf.prediction_table(run, outputs)
  table.to_csv(out / f"predictions_{options.split}.csv", index=False)
  n = run.grid_side
  metrics: dict[str, Any] = {"run_dir": str(run_dir), "task": run.task, "model": run.config.model,
                             "checkpoint": run.checkpoint, "epoch": run.epoch,
                             "split": options.split, "n_slides": int(len(table))}
  sections = [_section("Run", f"Task `{run.task}`, model `{run.config.model}`, "
                       f"{run.checkpoint} checkpoint (epoch {run.epoch}), evaluated on the "
                       f"{len(table)} slides of the `{options.split}` split of `{cohort.path}`.")]

  # Cohort level.
  stage("cohort figures and training curves")
  train = cohort.slides[cohort.slides["slide_id"].astype(str).isin(run.splits.get("train", []))]
  train = train[train["surv_time"] >= 0]
  cohort_images, cohort_metrics, note = cohort_figures(
      table, out, task=run.task_spec,
      train_time=train["surv_time"].to_numpy(), train_event=train["event"].to_numpy(),
      cut_points=run.preprocessor.surv_cuts)
  metrics["cohort"] = cohort_metrics
  scalar = {k: v for k, v in cohort_metrics.items() if not isinstance(v, dict)}
  if "time_dependent_auc" in cohort_metrics:
    scalar["mean_time_dependent_auc"] = cohort_metrics["time_dependent_auc"]["mean_auc"]
  tables = {"cohort metrics": pd.DataFrame([scalar])} if scalar else {}
  sections.append(_section("Cohort", note, tables, cohort_images))

  metrics_path = run.run_dir / run_dir_lib.METRICS_FILE
  if metrics_path.is_file() and metrics_path.read_text().strip():
    curves = figures.plot_training_curves(out / "training_curves.png", metrics_path,
                                          best_epoch=run.epoch if run.checkpoint == "best" else None)
    sections.append(_section("Training and validation curves",
                             "From `metrics.jsonl`; the dashed line is the epoch selected on "
                             "validation.", images=[curves]))

  # Sampling points and attention mass.
  geometry = sampling_geometry(outputs, n)
  stage(f"sampling-point figures of {min(options.n_slides, len(table))} slides and their ablations")
  if geometry:
    concentration = region_concentrations(geometry, outputs, n)
    metrics["region_concentration"] = concentration
    slide_images = []
    for i in range(min(options.n_slides, len(table))):
      background, caption = _slide_background(outputs, i, n)
      slide_images.append(figures.plot_slide_sampling(
          out / f"slide_{i:02d}_sampling.png", background, geometry["tumour"]["points"][i],
          geometry["micro"]["points"][i], geometry["tumour"]["patch_mass"][i],
          geometry["micro"]["patch_mass"][i],
          title=f"{slide_title(table, i, run.class_names)}\n({caption})",
          coords=_slide_coords(outputs, i, n), regions=_slide_regions(outputs, i, n)))
    text = ("Left: each branch's deformable sampling points, one colour per offset group; right: "
            "the attention mass each patch receives (per-point mass summed over queries and the "
            "group's heads, shared among the sampled patches with the bilinear weights), both "
            "branches on one colour scale, known regions as contours. Points outside the grid read "
            "only zero padding (no tissue); the figure says how many there are.")
    conc_tables = {}
    if concentration:
      text += ("\n\nRegion concentration = sampling mass inside a planted region / (mass on the "
               "grid x the region's area fraction), pooled over slides; chance = 1. `<branch>_on_` "
               "counts the sampling points, `<branch>_attention_on_` weights each point by the "
               "attention mass its key receives; `lattice_on_` is the undeformed lattice and "
               "`_mismatched` scores each slide on another slide's region (content-blind nulls).")
      if "micro_over_tumour_on_immune" in concentration:
        text += f" **{immune_sentence(concentration)}**"
      conc_tables["region concentration (chance = 1)"] = pd.DataFrame(
          [{"measure": k, "value": v} for k, v in concentration.items()])
    sections.append(_section("Sampling points and attention mass per slide", text, conc_tables,
                             slide_images))
    if ablation.supports(run.params):
      use = sampling_use(run, lambda: bar(inf.cohort_batches(run, cohort, indices), "ablation"),
                         table, outputs)
      metrics["sampling_use"] = use
      sections.append(_section("Does the prediction use the sampling points?",
                               sampling_use_text(use), {"sampling use": sampling_use_table(use)}))
  else:
    sections.append(_section("Sampling points", f"Model `{run.config.model}` has no 2D "
                             "deformable sampling grids; no per-slide sampling figures."))

  # Gene importance.
  stage(f"gene importance: integrated gradients ({options.ig_steps} steps) over "
        f"{min(options.ig_slides, len(indices))} slides")
  tables = gene_importance(run.spec.module.apply, run.params,
                           bar(inf.cohort_batches(run, cohort, indices), "integrated gradients"),
                           run.gene_names, task=run.task_spec, steps=options.ig_steps,
                           alpha_batch_size=options.alpha_batch_size, max_slides=options.ig_slides)
  csv = gene_importance_csv(tables, out / "gene_importance.csv")
  bars = figures.plot_gene_importance(out / "gene_importance.png", tables["tumour"],
                                      tables["micro"], k=options.top_k)
  n_ig = min(options.ig_slides, len(indices))
  metrics["top_genes"] = {s: t["gene"].head(options.top_k).tolist() for s, t in tables.items()}
  target = run.task_spec.attribution_target_name
  sections.append(_section(
      "Gene importance",
      f"Integrated gradients ({options.ig_steps} steps, baseline = training mean) of the {target} "
      f"w.r.t. the normalised gene inputs, mean |attribution| over {n_ig} slides (whiskers: "
      f"+- its std across the slides); red bars: positive mean attribution, blue: negative. "
      f"All genes: `{csv.name}`.",
      {f"top {options.top_k} {SUBSPACE_TITLES[s]} genes": t.head(options.top_k)
       for s, t in tables.items()}, [bars]))

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


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m experiments.report", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--run", required=True, help="training run directory")
  p.add_argument("--out", help="output folder (default DIR/report)")
  p.add_argument("--split", default="test", choices=("train", "val", "test", "all"))
  p.add_argument("--which", choices=("best", "latest"), default="best")
  p.add_argument("--slides", type=int, default=ReportOptions.n_slides,
                 help="slides with a sampling figure")
  p.add_argument("--ig-slides", type=int, default=ReportOptions.ig_slides,
                 help="slides the gene importances average over")
  p.add_argument("--ig-steps", type=int, default=ReportOptions.ig_steps)
  p.add_argument("--top-k", type=int, default=ReportOptions.top_k)
  p.add_argument("--data-dir", help="where cohort records are written (default: the run's)")
  p.add_argument("--no-progress", action="store_true", help="no progress bars")
  return p


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  from smml_jax.data.errors import CohortError
  from smml_jax.evaluate.inference import InferenceError
  options = ReportOptions(split=args.split, checkpoint=args.which, n_slides=args.slides,
                          ig_slides=args.ig_slides, ig_steps=args.ig_steps, top_k=args.top_k,
                          data_dir=args.data_dir)
  try:
    metrics = build_report(args.run, options, args.out, progress=not args.no_progress)
  except (InferenceError, CohortError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  conc = metrics.get("region_concentration", {})
  if "micro_over_tumour_on_immune" in conc:
    print(immune_sentence(conc))
  return 0


if __name__ == "__main__":
  sys.exit(main())
