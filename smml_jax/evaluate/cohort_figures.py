"""Cohort-level figures of a prediction table: ROC / confusion, or Kaplan-Meier / time-dependent AUC."""

from __future__ import annotations

import pathlib
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from smml_jax.evaluate import figures
from smml_jax.metrics import evaluation as metrics_lib


def cohort_figures(
  table: pd.DataFrame,
  out: pathlib.Path,
  *,
  task,
  train_time: Optional[np.ndarray] = None,
  train_event: Optional[np.ndarray] = None,
  cut_points: Sequence[float] = (),
) -> tuple[list[pathlib.Path], dict, str]:
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
  return COHORT_FIGURES[task.kind](
    table, out, task=task, train_time=train_time, train_event=train_event, cut_points=cut_points
  )


def _classification_figures(table, out, *, task, **unused):
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
  images.append(figures.plot_confusion(out / "confusion.png", np.asarray(m["confusion_matrix"]), class_names))
  metrics = {key: v for key, v in m.items() if v is None or isinstance(v, (int, float))}
  return images, metrics, ""


def _survival_figures(table, out, *, task, train_time, train_event, cut_points):
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
    times = np.unique(np.concatenate([np.asarray(cut_points, np.float64), np.quantile(time, [0.2, 0.4, 0.6, 0.8])]))
    try:
      used, auc, mean_auc = figures.time_dependent_auc(risk, time, event, train_time, train_event, times)
      images.append(
        figures.plot_time_dependent_auc(
          out / "time_dependent_auc.png", risk, time, event, train_time, train_event, times
        )
      )
      metrics["time_dependent_auc"] = {"times": used.tolist(), "auc": auc.tolist(), "mean_auc": mean_auc}
    except ValueError as e:
      notes.append(f"Time-dependent AUC: {e}.")
  return images, metrics, " ".join(notes)


COHORT_FIGURES = {"classification": _classification_figures, "survival": _survival_figures}
