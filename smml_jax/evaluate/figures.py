"""PNG figures for the interpretability report (matplotlib, Agg backend).

Every function writes one PNG and returns the path it wrote, except `plot_km_risk_groups`, which
returns the log-rank p-value it printed in the title.
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Optional, Sequence, Union

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import auc as _auc  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402
from sksurv.compare import compare_survival  # noqa: E402
from sksurv.metrics import cumulative_dynamic_auc  # noqa: E402
from sksurv.nonparametric import kaplan_meier_estimator  # noqa: E402
from sksurv.util import Surv  # noqa: E402

PathLike = Union[str, pathlib.Path]
_DPI = 110
# Keys of a metrics.jsonl line that index a record rather than measure something.
_INDEX_KEYS = ("epoch", "step", "split")


def _save(fig: plt.Figure, path: PathLike) -> pathlib.Path:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=_DPI, bbox_inches="tight", facecolor="white")
  plt.close(fig)
  return path


def _group_colors(groups: int) -> np.ndarray:
  return plt.get_cmap("tab10" if groups <= 10 else "tab20")(np.arange(groups) % 20)


# ----------------------------------------------------------------------------- per slide


def _nearest_cell_positions(points: np.ndarray, coords: np.ndarray, grid_side: int) -> np.ndarray:
  """(G, P, 2) (row, col) grid pixels -> (G, P, 2) slide (x, y) of the nearest real patch (NaN if none)."""
  cell = np.rint(points).astype(np.int64)
  inside = np.all((cell >= 0) & (cell < grid_side), axis=-1)
  flat = np.clip(cell[..., 0], 0, grid_side - 1) * grid_side + np.clip(cell[..., 1], 0, grid_side - 1)
  out = coords[flat].astype(np.float64)
  out[~inside] = np.nan
  return out


def plot_slide_sampling(
    path: PathLike,
    patch_image: np.ndarray,
    points_tumour: np.ndarray,
    points_micro: np.ndarray,
    mass_tumour: np.ndarray,
    mass_micro: np.ndarray,
    title: str,
    coords: Optional[np.ndarray] = None,
) -> pathlib.Path:
  """One slide: each subspace's sampling points per offset group next to the attention mass per patch.

  A 2 x 2 panel: rows = tumour / microenvironment subspace; left = the patch grid (or slide layout)
  with the deformable sampling points, one colour per offset group; right = attention mass per patch.

  Args:
    path: PNG to write.
    patch_image: (n, n) per-patch background value on the patch grid (e.g. a planted region mask,
      patch-feature norm, or 0/1 occupancy).
    points_tumour, points_micro: (G, P, 2) (row, col) pixel positions (`grid_points_to_pixels`, one slide).
    mass_tumour, mass_micro: (n, n) attention mass per patch (`patch_mass`, one slide).
    title: figure title.
    coords: optional (n * n, 2) slide (x, y) position of every grid cell, row-major, NaN for padding
      cells; when given, the panels show the slide layout and each point sits on its nearest real patch.
  """
  patch_image = np.asarray(patch_image, np.float64)
  if patch_image.ndim != 2 or patch_image.shape[0] != patch_image.shape[1]:
    raise ValueError(f"plot_slide_sampling: patch_image must be (n, n), got {patch_image.shape}")
  n = patch_image.shape[0]
  for name, pts in (("points_tumour", points_tumour), ("points_micro", points_micro)):
    if np.ndim(pts) != 3 or np.shape(pts)[-1] != 2:
      raise ValueError(f"plot_slide_sampling: {name} must be (G, P, 2), got {np.shape(pts)}")
  for name, mass in (("mass_tumour", mass_tumour), ("mass_micro", mass_micro)):
    if np.shape(mass) != (n, n):
      raise ValueError(f"plot_slide_sampling: {name} must be ({n}, {n}), got {np.shape(mass)}")
  if coords is not None and np.shape(coords) != (n * n, 2):
    raise ValueError(f"plot_slide_sampling: coords must be ({n * n}, 2), got {np.shape(coords)}")

  # Shift the grey scale so the lowest background value is light grey, not invisible white.
  low, high = float(np.nanmin(patch_image)), float(np.nanmax(patch_image))
  shade = dict(cmap="Greys", vmin=low - 0.15 * max(high - low, 1e-12), vmax=high)
  fig, axes = plt.subplots(2, 2, figsize=(10, 10))
  for row, (name, pts, mass) in enumerate((("tumour", points_tumour, mass_tumour),
                                           ("microenvironment", points_micro, mass_micro))):
    pts = np.asarray(pts, np.float64)
    mass = np.asarray(mass, np.float64)
    ax_pts, ax_mass = axes[row]
    colors = _group_colors(pts.shape[0])
    if coords is None:
      ax_pts.imshow(patch_image, **shade, origin="upper", extent=(-0.5, n - 0.5, n - 0.5, -0.5))
      for g in range(pts.shape[0]):
        ax_pts.scatter(pts[g, :, 1], pts[g, :, 0], s=9, color=colors[g], label=f"group {g}",
                       edgecolors="none")
      ax_pts.set_xlim(-0.5 - 0.1 * n, n - 0.5 + 0.1 * n)
      ax_pts.set_ylim(n - 0.5 + 0.1 * n, -0.5 - 0.1 * n)
      ax_pts.add_patch(plt.Rectangle((-0.5, -0.5), n, n, fill=False, edgecolor="black", lw=0.8))
      mass_img = ax_mass.imshow(mass, cmap="magma", origin="upper")
    else:
      xy = np.asarray(coords, np.float64)
      real = np.all(np.isfinite(xy), axis=1)
      ax_pts.scatter(xy[real, 0], xy[real, 1], c=patch_image.ravel()[real], **shade, s=12, marker="s")
      slide_pts = _nearest_cell_positions(pts, xy, n)
      for g in range(pts.shape[0]):
        ax_pts.scatter(slide_pts[g, :, 0], slide_pts[g, :, 1], s=9, color=colors[g], label=f"group {g}",
                       edgecolors="none")
      mass_img = ax_mass.scatter(xy[real, 0], xy[real, 1], c=mass.ravel()[real], cmap="magma", s=12,
                                 marker="s")
      for ax in (ax_pts, ax_mass):
        ax.invert_yaxis()
        ax.set_aspect("equal")
    ax_pts.set_title(f"{name}: sampling points per offset group")
    ax_pts.legend(loc="upper right", fontsize=6, markerscale=1.5, ncol=2, framealpha=0.7)
    ax_mass.set_title(f"{name}: attention mass per patch")
    fig.colorbar(mass_img, ax=ax_mass, fraction=0.046, pad=0.04)
  fig.suptitle(title)
  return _save(fig, path)


def plot_gene_importance(path: PathLike, df_tumour: pd.DataFrame, df_micro: pd.DataFrame,
                         k: int = 20) -> pathlib.Path:
  """Top-k genes per subspace as horizontal bars of mean |IG| (red = positive mean attribution).

  Args:
    df_tumour, df_micro: `interpret.top_genes` tables (gene, mean_abs_attribution, mean_attribution).
  """
  fig, axes = plt.subplots(1, 2, figsize=(11, max(3.0, 0.28 * k + 1.5)))
  for ax, (name, frame) in zip(axes, (("tumour genes", df_tumour), ("microenvironment genes", df_micro))):
    missing = {"gene", "mean_abs_attribution", "mean_attribution"} - set(frame.columns)
    if missing:
      raise ValueError(f"plot_gene_importance: the {name} table lacks column(s) {sorted(missing)}")
    top = frame.sort_values("mean_abs_attribution", ascending=False).head(k)[::-1]
    colors = np.where(top["mean_attribution"].to_numpy() >= 0, "tab:red", "tab:blue")
    ax.barh(top["gene"].astype(str), top["mean_abs_attribution"], color=colors)
    ax.set_title(f"{name}: top {len(top)} by mean |IG|")
    ax.set_xlabel("mean |integrated gradient|")
    ax.tick_params(axis="y", labelsize=7)
  fig.tight_layout()
  return _save(fig, path)


# ----------------------------------------------------------------------------- classification


def plot_roc(path: PathLike, labels: np.ndarray, probs: np.ndarray,
             class_names: Sequence[str]) -> pathlib.Path:
  """One-vs-rest ROC curve per class, AUC in the legend (classes absent or universal: 'n/a').

  Args:
    labels: (N,) int class labels.
    probs: (N, K) predicted class probabilities.
    class_names: K names.
  """
  labels = np.asarray(labels)
  probs = np.asarray(probs, np.float64)
  if probs.ndim != 2 or probs.shape[0] != labels.shape[0] or probs.shape[1] != len(class_names):
    raise ValueError(f"plot_roc: expected labels (N,) and probs (N, {len(class_names)}), got "
                     f"{labels.shape} and {probs.shape}")
  fig, ax = plt.subplots(figsize=(5.5, 5))
  ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
  for k, name in enumerate(class_names):
    positive = labels == k
    if positive.all() or not positive.any():
      ax.plot([], [], label=f"{name} (AUC n/a: {int(positive.sum())} positives)")
      continue
    fpr, tpr, _ = roc_curve(positive, probs[:, k])
    ax.plot(fpr, tpr, lw=1.5, label=f"{name} (AUC {_auc(fpr, tpr):.3f})")
  ax.set_xlabel("false positive rate")
  ax.set_ylabel("true positive rate")
  ax.set_title("ROC, one vs rest")
  ax.legend(loc="lower right", fontsize=8)
  return _save(fig, path)


def plot_confusion(path: PathLike, cm: np.ndarray, class_names: Sequence[str]) -> pathlib.Path:
  """Confusion matrix (rows = true, columns = predicted): colour = row-normalised, text = counts."""
  cm = np.asarray(cm)
  k = len(class_names)
  if cm.shape != (k, k):
    raise ValueError(f"plot_confusion: cm must be ({k}, {k}) for {k} class names, got {cm.shape}")
  rows = cm.sum(axis=1, keepdims=True)
  norm = np.divide(cm, rows, out=np.zeros(cm.shape, np.float64), where=rows > 0)
  fig, ax = plt.subplots(figsize=(1.2 * k + 2.5, 1.2 * k + 2))
  img = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
  for i in range(k):
    for j in range(k):
      ax.text(j, i, f"{cm[i, j]:g}", ha="center", va="center",
              color="white" if norm[i, j] > 0.5 else "black")
  ax.set_xticks(range(k), class_names, rotation=30, ha="right")
  ax.set_yticks(range(k), class_names)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  ax.set_title("confusion matrix (colour: fraction of true class)")
  fig.colorbar(img, ax=ax, fraction=0.046, pad=0.04)
  return _save(fig, path)


# ----------------------------------------------------------------------------- survival


def _survival_arrays(time: np.ndarray, event: np.ndarray, what: str) -> np.ndarray:
  time = np.asarray(time, np.float64)
  event = np.asarray(event)
  if time.ndim != 1 or time.shape != event.shape:
    raise ValueError(f"{what}: time and event must be matching (N,) arrays, got {time.shape} and "
                     f"{event.shape}")
  if not np.all(np.isfinite(time)) or np.any(time < 0):
    raise ValueError(f"{what}: survival times must be finite and >= 0")
  return Surv.from_arrays(event=event.astype(bool), time=time)


def risk_groups(risk: np.ndarray) -> np.ndarray:
  """Median split: (N,) bool, True = high risk (risk strictly above the median)."""
  risk = np.asarray(risk, np.float64)
  high = risk > np.median(risk)
  if high.all() or not high.any():
    raise ValueError("risk_groups: the median split leaves one group empty (all risks tied?)")
  return high


def plot_km_risk_groups(path: PathLike, risk: np.ndarray, time: np.ndarray, event: np.ndarray) -> float:
  """Kaplan-Meier curves of the median-split low/high predicted-risk groups; returns the log-rank p.

  Args:
    path: PNG to write.
    risk: (N,) predicted risk (higher = worse, e.g. `tasks.Survival.outputs(logits)["risk"]`).
    time: (N,) follow-up time (days).
    event: (N,) 1 = death observed, 0 = censored.

  Returns:
    The log-rank test p-value (scikit-survival `compare_survival`), also shown in the title.
  """
  y = _survival_arrays(time, event, "plot_km_risk_groups")
  if np.shape(risk) != y.shape:
    raise ValueError(f"plot_km_risk_groups: risk has shape {np.shape(risk)}, time {y.shape}")
  high = risk_groups(risk)
  _, p_value = compare_survival(y, high.astype(np.int64))
  fig, ax = plt.subplots(figsize=(6, 4.5))
  for mask, name, color in ((~high, "low risk", "tab:blue"), (high, "high risk", "tab:red")):
    t, s = kaplan_meier_estimator(y["event"][mask], y["time"][mask])
    t = np.concatenate([[0.0], t])
    s = np.concatenate([[1.0], s])
    ax.step(t, s, where="post", color=color, label=f"{name} (n={int(mask.sum())}, "
            f"events={int(y['event'][mask].sum())})")
  ax.set_ylim(-0.02, 1.02)
  ax.set_xlabel("time (days)")
  ax.set_ylabel("survival probability")
  ax.set_title(f"Kaplan-Meier by predicted risk (median split), log-rank p = {p_value:.3g}")
  ax.legend(loc="lower left", fontsize=8)
  _save(fig, path)
  return float(p_value)


def time_dependent_auc(risk: np.ndarray, time: np.ndarray, event: np.ndarray, train_time: np.ndarray,
                       train_event: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
  """Cumulative/dynamic AUC(t) (scikit-survival), with `times` clipped to where it is defined.

  Keeps the times t with min(time) <= t < max(time) and t < max(train_time) (the censoring
  distribution is estimated on the training split).

  Returns:
    (times used, AUC at those times, the survival-weighted mean AUC).
  """
  y_test = _survival_arrays(time, event, "time_dependent_auc")
  y_train = _survival_arrays(train_time, train_event, "time_dependent_auc (train)")
  times = np.sort(np.asarray(times, np.float64).ravel())
  keep = (times >= y_test["time"].min()) & (times < y_test["time"].max()) & (times < y_train["time"].max())
  times = times[keep]
  if times.size == 0:
    raise ValueError("time_dependent_auc: none of the requested times lies inside the follow-up range "
                     f"[{y_test['time'].min():g}, {min(y_test['time'].max(), y_train['time'].max()):g})")
  auc, mean_auc = cumulative_dynamic_auc(y_train, y_test, np.asarray(risk, np.float64), times)
  return times, np.asarray(auc), float(mean_auc)


def plot_time_dependent_auc(path: PathLike, risk: np.ndarray, time: np.ndarray, event: np.ndarray,
                            train_time: np.ndarray, train_event: np.ndarray,
                            times: np.ndarray) -> pathlib.Path:
  """Time-dependent (cumulative/dynamic) AUC of the predicted risk; see `time_dependent_auc`."""
  used, auc, mean_auc = time_dependent_auc(risk, time, event, train_time, train_event, times)
  fig, ax = plt.subplots(figsize=(6, 4.5))
  ax.plot(used, auc, marker="o", color="tab:purple", label="AUC(t)")
  ax.axhline(mean_auc, color="tab:purple", ls="--", lw=1, label=f"mean AUC {mean_auc:.3f}")
  ax.axhline(0.5, color="grey", ls=":", lw=1, label="chance")
  ax.set_ylim(0, 1.02)
  ax.set_xlabel("time (days)")
  ax.set_ylabel("cumulative/dynamic AUC")
  ax.set_title("time-dependent AUC of the predicted risk")
  ax.legend(loc="lower right", fontsize=8)
  return _save(fig, path)


# ----------------------------------------------------------------------------- training curves


def read_metrics_jsonl(path: PathLike) -> pd.DataFrame:
  """metrics.jsonl (one JSON object per line) -> DataFrame; blank lines are skipped."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise ValueError(f"read_metrics_jsonl: {path} does not exist")
  records = []
  for number, line in enumerate(path.read_text().splitlines(), start=1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as err:
      raise ValueError(f"read_metrics_jsonl: {path} line {number} is not valid JSON ({err.msg})") from err
    if not isinstance(record, dict):
      raise ValueError(f"read_metrics_jsonl: {path} line {number} is not a JSON object")
    records.append(record)
  if not records:
    raise ValueError(f"read_metrics_jsonl: {path} holds no records")
  return pd.DataFrame.from_records(records)


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def plot_training_curves(path: PathLike, metrics_jsonl_path: PathLike) -> pathlib.Path:
  """Every numeric metric of metrics.jsonl vs epoch, one line per split, one panel per metric.

  Lines look like {"epoch": 3, "split": "val", "loss": 0.7, "auc": 0.8}. The x axis is `epoch`, else
  `step`, else the line order; a missing `split` counts as "all"; missing or non-numeric values are
  skipped.
  """
  frame = read_metrics_jsonl(metrics_jsonl_path)
  x_key = next((k for k in ("epoch", "step") if k in frame.columns), None)
  x = frame[x_key] if x_key else pd.Series(np.arange(len(frame)), index=frame.index)
  split = frame["split"].fillna("all").astype(str) if "split" in frame.columns else pd.Series(
      "all", index=frame.index)
  metrics = [c for c in frame.columns if c not in _INDEX_KEYS and frame[c].map(_is_number).any()]
  if not metrics:
    raise ValueError(f"plot_training_curves: {metrics_jsonl_path} has no numeric metric besides "
                     f"{list(_INDEX_KEYS)}")
  cols = min(3, len(metrics))
  rows = math.ceil(len(metrics) / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.4 * rows), squeeze=False)
  for ax, metric in zip(axes.ravel(), metrics):
    for name in sorted(split.unique()):
      keep = (split == name) & frame[metric].map(_is_number) & x.map(_is_number)
      if not keep.any():
        continue
      xs = x[keep].astype(float).to_numpy()
      ys = frame.loc[keep, metric].astype(float).to_numpy()
      order = np.argsort(xs, kind="stable")
      ax.plot(xs[order], ys[order], marker="o", ms=3, label=name)
    ax.set_title(metric)
    ax.set_xlabel(x_key or "record")
    ax.legend(fontsize=8)
  for ax in axes.ravel()[len(metrics):]:
    ax.axis("off")
  fig.tight_layout()
  return _save(fig, path)
