"""PNG figures for the interpretability report (matplotlib, Agg backend).

Every function writes one PNG and returns the path it wrote, except `plot_km_risk_groups`, which
returns the log-rank p-value it printed in the title.
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Mapping, Optional, Sequence, Union

import matplotlib

matplotlib.use("Agg")

import matplotlib.ticker  # noqa: E402
import matplotlib.transforms  # noqa: E402

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


def outside_fraction(points: np.ndarray, grid_side: int) -> float:
  """Fraction of (..., 2) (row, col) pixel positions whose bilinear footprint misses the grid.

  Patch centres are at 0 .. n - 1; a point at or beyond -1 or n in either coordinate reads only the
  zero padding, i.e. sees no tissue. (Points between the border and there read part padding; the
  undeformed lattice puts its outer points on the border, -0.5 and n - 0.5.)
  """
  points = np.asarray(points, np.float64)
  out = np.any((points <= -1.0) | (points >= grid_side), axis=-1)
  return float(out.mean()) if out.size else 0.0


def _patch_ticks(ax: plt.Axes, n: int) -> None:
  """Integer patch indices on both axes (at most ~8 ticks each)."""
  ticks = matplotlib.ticker.MaxNLocator(nbins=7, integer=True).tick_values(0, n - 1)
  ticks = ticks[(ticks >= 0) & (ticks <= n - 1)].astype(int)
  ax.set_xticks(ticks)
  ax.set_yticks(ticks)
  ax.set_xlabel("patch column")
  ax.set_ylabel("patch row")


_REGION_COLORS = ("tab:cyan", "tab:green", "tab:orange", "tab:pink")


def plot_slide_sampling(
    path: PathLike,
    patch_image: np.ndarray,
    points_tumour: np.ndarray,
    points_micro: np.ndarray,
    mass_tumour: np.ndarray,
    mass_micro: np.ndarray,
    title: str,
    coords: Optional[np.ndarray] = None,
    regions: Optional[Mapping[str, np.ndarray]] = None,
) -> pathlib.Path:
  """One slide: each subspace's sampling points per offset group next to the attention mass per patch.

  A 2 x 2 panel: rows = tumour / microenvironment subspace; left = the patch grid (or slide layout)
  with the deformable sampling points, one colour per offset group; right = attention mass per patch,
  both subspaces on one colour scale, with the known regions drawn as contours. Axes are in patch
  indices (grid) or slide pixels (layout). A note says how many points fall outside the grid, where
  the bilinear sampling reads zero padding.

  Args:
    path: PNG to write.
    patch_image: (n, n) per-patch background value on the patch grid (e.g. a planted region mask,
      patch-feature norm, or 0/1 occupancy).
    points_tumour, points_micro: (G, P, 2) (row, col) pixel positions (`grid_points_to_pixels`, one slide).
    mass_tumour, mass_micro: (n, n) attention mass per patch (`patch_mass`, one slide).
    title: figure title (e.g. the slide id, its label and the prediction).
    coords: optional (n * n, 2) slide (x, y) position of every grid cell, row-major, NaN for padding
      cells; when given, the panels show the slide layout and each point sits on its nearest real patch.
    regions: optional {name: (n, n) 0/1 mask} (e.g. immune, tumour) contoured on the attention maps.
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
  regions = dict(regions or {})
  for name, mask in regions.items():
    if np.shape(mask) != (n, n):
      raise ValueError(f"plot_slide_sampling: region {name!r} must be ({n}, {n}), got "
                       f"{np.shape(mask)}")

  # Shift the grey scale so the lowest background value is light grey, not invisible white.
  low, high = float(np.nanmin(patch_image)), float(np.nanmax(patch_image))
  shade = dict(cmap="Greys", vmin=low - 0.15 * max(high - low, 1e-12), vmax=high)
  # One scale for both subspaces' attention maps, so their brightness compares.
  top = max(float(np.nanmax(mass_tumour)), float(np.nanmax(mass_micro)), 1e-12)
  mass_scale = dict(cmap="magma", vmin=0.0, vmax=top)
  fig, axes = plt.subplots(2, 2, figsize=(10, 10))
  notes = []
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
      mass_img = ax_mass.imshow(mass, **mass_scale, origin="upper")
      fine = 8  # contour an upsampled mask so the outline follows the patch edges
      sub = (np.arange(n * fine) + 0.5) / fine - 0.5
      for k, (region, mask) in enumerate(regions.items()):
        color = _REGION_COLORS[k % len(_REGION_COLORS)]
        ax_mass.contour(sub, sub, np.kron(np.asarray(mask, np.float64), np.ones((fine, fine))),
                        levels=[0.5], colors=[color], linewidths=1.2)
        ax_mass.plot([], [], color=color, lw=1.2, label=region)
      if regions:
        ax_mass.legend(loc="upper right", fontsize=7, framealpha=0.7)
      for ax in (ax_pts, ax_mass):
        _patch_ticks(ax, n)
    else:
      xy = np.asarray(coords, np.float64)
      real = np.all(np.isfinite(xy), axis=1)
      ax_pts.scatter(xy[real, 0], xy[real, 1], c=patch_image.ravel()[real], **shade, s=12, marker="s")
      slide_pts = _nearest_cell_positions(pts, xy, n)
      for g in range(pts.shape[0]):
        ax_pts.scatter(slide_pts[g, :, 0], slide_pts[g, :, 1], s=9, color=colors[g], label=f"group {g}",
                       edgecolors="none")
      mass_img = ax_mass.scatter(xy[real, 0], xy[real, 1], c=mass.ravel()[real], **mass_scale, s=12,
                                 marker="s")
      for ax in (ax_pts, ax_mass):
        ax.invert_yaxis()
        ax.set_aspect("equal")
        ax.set_xlabel("slide x (pixels)")
        ax.set_ylabel("slide y (pixels)")
    outside = outside_fraction(pts, n)
    if outside > 0:
      notes.append(f"{name}: {outside:.0%} of the sampling points lie outside the grid "
                   "(they read only zero padding)")
    ax_pts.set_title(f"{name}: sampling points per offset group")
    ax_pts.legend(loc="upper right", fontsize=6, markerscale=1.5, ncol=2, framealpha=0.7)
    ax_mass.set_title(f"{name}: attention mass per patch")
    fig.colorbar(mass_img, ax=ax_mass, fraction=0.046, pad=0.04)
  fig.suptitle(title)
  if notes:
    fig.text(0.5, 0.005, "\n".join(notes), ha="center", va="bottom", fontsize=9, color="tab:red")
  return _save(fig, path)


def plot_gene_importance(path: PathLike, df_tumour: pd.DataFrame, df_micro: pd.DataFrame,
                         k: int = 20) -> pathlib.Path:
  """Top-k genes per subspace: bars of mean |IG|, whiskers +- the std of |IG| across slides.

  Bar colour = sign of the mean attribution (red: raises the explained output, blue: lowers it).

  Args:
    df_tumour, df_micro: `interpret.top_genes` tables (gene, mean_abs_attribution,
      mean_attribution, and std_abs_attribution for the whiskers when present).
  """
  fig, axes = plt.subplots(1, 2, figsize=(11, max(3.0, 0.28 * k + 1.5)))
  for ax, (name, frame) in zip(axes, (("tumour genes", df_tumour), ("microenvironment genes", df_micro))):
    missing = {"gene", "mean_abs_attribution", "mean_attribution"} - set(frame.columns)
    if missing:
      raise ValueError(f"plot_gene_importance: the {name} table lacks column(s) {sorted(missing)}")
    top = frame.sort_values("mean_abs_attribution", ascending=False).head(k)[::-1]
    positive = top["mean_attribution"].to_numpy() >= 0
    spread = top["std_abs_attribution"].to_numpy() if "std_abs_attribution" in top else None
    y = np.arange(len(top))
    for sign, color, label in ((positive, "tab:red", "positive mean attribution"),
                               (~positive, "tab:blue", "negative mean attribution")):
      ax.barh(y[sign], top["mean_abs_attribution"].to_numpy()[sign], color=color, label=label)
    if spread is not None:
      ax.errorbar(top["mean_abs_attribution"], y, xerr=np.nan_to_num(spread), fmt="none",
                  ecolor="black", elinewidth=0.8, capsize=2, label="+- std across slides")
    ax.set_yticks(y, top["gene"].astype(str))
    ax.set_title(f"{name}: top {len(top)} by mean |IG|")
    ax.set_xlabel("mean |integrated gradient|")
    ax.set_xlim(left=0)
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(loc="lower right", fontsize=7)
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


def km_tick_times(time: np.ndarray, max_ticks: int = 6) -> np.ndarray:
  """Round time-axis ticks from 0 to the last follow-up (where the numbers at risk are counted)."""
  top = float(np.max(time))
  ticks = matplotlib.ticker.MaxNLocator(nbins=max_ticks, steps=[1, 2, 2.5, 5, 10]).tick_values(0, top)
  return ticks[(ticks >= 0) & (ticks <= top)]


def numbers_at_risk(time: np.ndarray, ticks: np.ndarray) -> np.ndarray:
  """(T,) int: how many of `time` are still followed (time >= t) at each tick t."""
  time = np.asarray(time, np.float64)
  return np.array([int((time >= t).sum()) for t in np.asarray(ticks, np.float64)])


def plot_km_risk_groups(path: PathLike, risk: np.ndarray, time: np.ndarray, event: np.ndarray) -> float:
  """Kaplan-Meier curves of the median-split low/high predicted-risk groups; returns the log-rank p.

  Each curve has its 95% log-log confidence band (scikit-survival) and a tick at every censored
  time; the numbers at risk at each time tick are written under the axis.

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
  ticks = km_tick_times(y["time"])
  groups = ((~high, "low risk", "tab:blue"), (high, "high risk", "tab:red"))
  fig, ax = plt.subplots(figsize=(6.5, 5.2))
  for mask, name, color in groups:
    t, s, (lower, upper) = kaplan_meier_estimator(y["event"][mask], y["time"][mask],
                                                  conf_type="log-log")
    t = np.concatenate([[0.0], t])
    s, lower, upper = (np.concatenate([[1.0], v]) for v in (s, lower, upper))
    ax.step(t, s, where="post", color=color, label=f"{name} (n={int(mask.sum())}, "
            f"events={int(y['event'][mask].sum())})")
    ax.fill_between(t, lower, upper, step="post", color=color, alpha=0.15, lw=0)
    censored = y["time"][mask & ~y["event"]]
    at = np.searchsorted(t, censored, side="right") - 1  # the curve's value at each censoring
    ax.plot(censored, s[at], ls="none", marker="|", ms=7, mew=1.2, color=color)
  ax.plot([], [], ls="none", marker="|", color="black", label="censored")
  ax.set_xticks(ticks)
  ax.set_xlim(0, float(np.max(y["time"])) * 1.02)
  ax.set_ylim(-0.02, 1.02)
  ax.set_xlabel("time (days)")
  ax.set_ylabel("survival probability (95% CI)")
  ax.set_title(f"Kaplan-Meier by predicted risk (median split), log-rank p = {p_value:.3g}",
               fontsize=10)
  ax.legend(loc="upper right", fontsize=8)
  # Numbers at risk: one row per group, under the tick labels, in data x / axes y coordinates.
  transform = matplotlib.transforms.blended_transform_factory(ax.transData, ax.transAxes)
  ax.text(0.0, -0.2, "number at risk", transform=ax.transAxes, fontsize=8, ha="left",
          fontweight="bold")
  for row, (mask, name, color) in enumerate(groups):
    level = -0.27 - 0.07 * row
    ax.text(-0.06, level, name, transform=ax.transAxes, ha="right", va="center", fontsize=8,
            color=color)
    for tick, count in zip(ticks, numbers_at_risk(y["time"][mask], ticks)):
      ax.text(tick, level, str(count), transform=transform, ha="center", va="center", fontsize=8,
              color=color)
  fig.subplots_adjust(bottom=0.3)
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


# Metrics that carry nothing over epochs (a split's size), and timing shown beside slides/s.
_UNINFORMATIVE = ("num_examples", "num_events", "compile_s")


def plot_training_curves(path: PathLike, metrics_jsonl_path: PathLike,
                         best_epoch: Optional[int] = None) -> pathlib.Path:
  """Every numeric metric of metrics.jsonl vs epoch, one line per split, one panel per metric.

  Lines look like {"epoch": 3, "split": "val", "loss": 0.7, "auc": 0.8}. The x axis is `epoch`, else
  `step`, else the line order; a missing `split` counts as "all"; missing or non-numeric values are
  skipped. Split sizes (`num_examples`) get no panel; the compilation time (`compile_s`) is written
  in the slides/s panel's title rather than mixed into its curve; `best_epoch` (the selected epoch,
  0-based like `epoch`) is marked in every panel. Epochs are drawn 0-based, as everywhere.
  """
  frame = read_metrics_jsonl(metrics_jsonl_path)
  x_key = next((k for k in ("epoch", "step") if k in frame.columns), None)
  x = frame[x_key] if x_key else pd.Series(np.arange(len(frame)), index=frame.index)
  split = frame["split"].fillna("all").astype(str) if "split" in frame.columns else pd.Series(
      "all", index=frame.index)
  metrics = [c for c in frame.columns if c not in _INDEX_KEYS and c not in _UNINFORMATIVE
             and frame[c].map(_is_number).any()]
  evaluated = lambda c: bool((frame[c].map(_is_number) & (split != "train")).any())
  metrics.sort(key=lambda c: not evaluated(c))  # evaluation metrics first, then training ones
  if not metrics:
    raise ValueError(f"plot_training_curves: {metrics_jsonl_path} has no numeric metric besides "
                     f"{list(_INDEX_KEYS) + list(_UNINFORMATIVE)}")
  compile_s = None
  if "compile_s" in frame.columns:
    values = frame["compile_s"][frame["compile_s"].map(_is_number)]
    compile_s = float(values.sum()) if len(values) else None
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
    if best_epoch is not None and x_key == "epoch":
      ax.axvline(best_epoch, color="black", ls="--", lw=0.8,
                 label=f"selected (epoch {best_epoch})")
    title = metric
    if metric == "slides_per_s" and compile_s is not None:
      title = f"slides_per_s (after compilation: {compile_s:.1f} s, not counted)"
    ax.set_title(title, fontsize=9 if len(title) > 30 else None)
    ax.set_xlabel(x_key or "record")
    if x_key == "epoch":
      ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.legend(fontsize=7)
  for ax in axes.ravel()[len(metrics):]:
    ax.axis("off")
  fig.tight_layout()
  return _save(fig, path)
