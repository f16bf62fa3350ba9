"""Survival figures: Kaplan-Meier risk groups with the log-rank test, time-dependent AUC."""

from __future__ import annotations

import pathlib

import matplotlib.ticker
import matplotlib.transforms
import numpy as np
from sksurv.compare import compare_survival
from sksurv.metrics import cumulative_dynamic_auc
from sksurv.nonparametric import kaplan_meier_estimator
from sksurv.util import Surv

from smml_jax.evaluate.figures import _common
from smml_jax.evaluate.figures._common import PathLike, plt


def _survival_arrays(time: np.ndarray, event: np.ndarray, what: str) -> np.ndarray:
  time = np.asarray(time, np.float64)
  event = np.asarray(event)
  if time.ndim != 1 or time.shape != event.shape:
    raise ValueError(f"{what}: time and event must be matching (N,) arrays, got {time.shape} and {event.shape}")
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
    t, s, (lower, upper) = kaplan_meier_estimator(y["event"][mask], y["time"][mask], conf_type="log-log")
    t = np.concatenate([[0.0], t])
    s, lower, upper = (np.concatenate([[1.0], v]) for v in (s, lower, upper))
    ax.step(
      t, s, where="post", color=color, label=f"{name} (n={int(mask.sum())}, events={int(y['event'][mask].sum())})"
    )
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
  ax.set_title(f"Kaplan-Meier by predicted risk (median split), log-rank p = {p_value:.3g}", fontsize=10)
  ax.legend(loc="upper right", fontsize=8)
  # Numbers at risk: one row per group, under the tick labels, in data x / axes y coordinates.
  transform = matplotlib.transforms.blended_transform_factory(ax.transData, ax.transAxes)
  ax.text(0.0, -0.2, "number at risk", transform=ax.transAxes, fontsize=8, ha="left", fontweight="bold")
  for row, (mask, name, color) in enumerate(groups):
    level = -0.27 - 0.07 * row
    ax.text(-0.06, level, name, transform=ax.transAxes, ha="right", va="center", fontsize=8, color=color)
    for tick, count in zip(ticks, numbers_at_risk(y["time"][mask], ticks)):
      ax.text(tick, level, str(count), transform=transform, ha="center", va="center", fontsize=8, color=color)
  fig.subplots_adjust(bottom=0.3)
  _common._save(fig, path)
  return float(p_value)


def time_dependent_auc(
  risk: np.ndarray,
  time: np.ndarray,
  event: np.ndarray,
  train_time: np.ndarray,
  train_event: np.ndarray,
  times: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, float]:
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
    raise ValueError(
      "time_dependent_auc: none of the requested times lies inside the follow-up range "
      f"[{y_test['time'].min():g}, {min(y_test['time'].max(), y_train['time'].max()):g})"
    )
  auc, mean_auc = cumulative_dynamic_auc(y_train, y_test, np.asarray(risk, np.float64), times)
  return times, np.asarray(auc), float(mean_auc)


def plot_time_dependent_auc(
  path: PathLike,
  risk: np.ndarray,
  time: np.ndarray,
  event: np.ndarray,
  train_time: np.ndarray,
  train_event: np.ndarray,
  times: np.ndarray,
) -> pathlib.Path:
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
  return _common._save(fig, path)
