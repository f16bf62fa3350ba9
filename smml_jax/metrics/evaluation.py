"""Host-side evaluation metrics (numpy / scikit-learn / scikit-survival).

Both functions return plain Python floats/lists (JSON-ready) and never raise for metrics
that the data cannot support: those are None.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
from sklearn import metrics as skm
from sksurv import metrics as sksm
from sksurv.util import Surv


def _float(x) -> Optional[float]:
  x = float(x)
  return None if np.isnan(x) else x


def classification_metrics(labels: np.ndarray, probs: np.ndarray, num_classes: int) -> dict[str, Any]:
  """Classification metrics of one evaluation split.

  Args:
    labels: (B,) int true classes; negative (-1 = missing) examples are dropped.
    probs: (B, K) class probabilities (or any scores; argmax is the prediction).
    num_classes: K.

  Returns:
    dict with
      accuracy, balanced_accuracy (mean recall over the classes present in `labels`),
      f1, precision, sensitivity (= recall), specificity: macro averages over the classes
        present in the labels or the predictions (scikit-learn's default label set;
        zero_division = 0),
      auc: macro one-vs-rest ROC AUC over the classes PRESENT in `labels` (a class with
        no positive example has no AUC; when every class is present this equals sklearn's
        `roc_auc_score(multi_class='ovr', average='macro')`); None when fewer than 2
        classes are present,
      auc_micro: ROC AUC of the flattened one-hot labels vs probs (all K columns); None
        when undefined,
      auc_classes: the classes the macro AUC averaged over,
      confusion_matrix: K x K list of lists (rows true, columns predicted),
      num_examples.
  """
  labels = np.asarray(labels).astype(np.int64).ravel()
  probs = np.asarray(probs, np.float64)
  if probs.ndim != 2 or probs.shape != (labels.shape[0], num_classes):
    raise ValueError(
      f"classification_metrics: probs must be (B, K) = ({labels.shape[0]}, {num_classes}), got {probs.shape}"
    )
  if labels.size and labels.max() >= num_classes:
    raise ValueError(f"classification_metrics: label {labels.max()} out of range for num_classes={num_classes}")
  keep = labels >= 0
  labels, probs = labels[keep], probs[keep]
  out: dict[str, Any] = {"num_examples": int(labels.size)}
  if labels.size == 0:
    return (
      out
      | {
        k: None
        for k in ("accuracy", "balanced_accuracy", "f1", "precision", "sensitivity", "specificity", "auc", "auc_micro")
      }
      | {"auc_classes": [], "confusion_matrix": np.zeros((num_classes, num_classes), int).tolist()}
    )
  preds = probs.argmax(axis=1)
  out["accuracy"] = float(skm.accuracy_score(labels, preds))
  present = np.unique(labels)
  recall_present = [np.mean(preds[labels == k] == k) for k in present]
  out["balanced_accuracy"] = float(np.mean(recall_present))
  out["f1"] = float(skm.f1_score(labels, preds, average="macro", zero_division=0))
  out["precision"] = float(skm.precision_score(labels, preds, average="macro", zero_division=0))
  out["sensitivity"] = float(skm.recall_score(labels, preds, average="macro", zero_division=0))
  label_set = np.union1d(labels, preds)
  per_class = skm.multilabel_confusion_matrix(labels, preds, labels=label_set)
  tn, fp = per_class[:, 0, 0], per_class[:, 0, 1]
  out["specificity"] = float(np.mean(np.where(tn + fp > 0, tn / np.maximum(tn + fp, 1), 0.0)))
  if present.size >= 2:
    out["auc"] = float(np.mean([skm.roc_auc_score(labels == k, probs[:, k]) for k in present]))
  else:
    out["auc"] = None
  out["auc_classes"] = present.tolist()
  onehot = np.eye(num_classes)[labels]
  try:
    out["auc_micro"] = float(skm.roc_auc_score(onehot.ravel(), probs.ravel()))
  except ValueError:
    out["auc_micro"] = None
  out["confusion_matrix"] = skm.confusion_matrix(labels, preds, labels=np.arange(num_classes)).tolist()
  return out


def survival_metrics(
  risk: np.ndarray,
  time: np.ndarray,
  event: np.ndarray,
  train_time: Optional[np.ndarray] = None,
  train_event: Optional[np.ndarray] = None,
  survival_curves: Optional[np.ndarray] = None,
  bin_times: Optional[np.ndarray] = None,
) -> dict[str, Any]:
  """Survival metrics of one evaluation split.

  Args:
    risk: (B,) risk scores, higher = shorter survival (e.g. `losses.survival.risk_from_logits`).
    time: (B,) follow-up time (days); event: (B,) 1 = death observed, 0 = censored.
    train_time, train_event: the TRAINING split's survival data, needed for the censoring
      distribution of the IPCW C-index and the Brier score.
    survival_curves: (B, T) predicted survival probabilities S(t) at `bin_times`.
    bin_times: (T,) increasing times of the curve's columns (e.g. the bins' upper edges).

  Returns:
    dict with
      c_index: Harrell's C (sksurv `concordance_index_censored`); None without a comparable pair,
      c_index_ipcw: Uno's C (sksurv `concordance_index_ipcw`, tau = None); None without
        training data or when sksurv cannot compute it (e.g. test times beyond the training
        follow-up),
      integrated_brier_score: sksurv IBS over the `bin_times` inside the test follow-up
        range [min, max); None without curves/training data or with fewer than 2 such times,
      brier_times: the times the IBS used (list),
      num_examples, num_events.
  """
  risk = np.asarray(risk, np.float64).ravel()
  time = np.asarray(time, np.float64).ravel()
  event = np.asarray(event).astype(bool).ravel()
  if not risk.shape == time.shape == event.shape:
    raise ValueError(
      f"survival_metrics: risk, time and event must have the same length, got {risk.shape}, {time.shape}, {event.shape}"
    )
  out: dict[str, Any] = {
    "num_examples": int(risk.size),
    "num_events": int(event.sum()),
    "c_index": None,
    "c_index_ipcw": None,
    "integrated_brier_score": None,
    "brier_times": [],
  }
  try:
    with np.errstate(invalid="ignore", divide="ignore"):  # sksurv may divide 0 / 0
      out["c_index"] = _float(sksm.concordance_index_censored(event, time, risk)[0])
  except (ValueError, ZeroDivisionError):  # all censored / no comparable pair
    pass
  if train_time is None or train_event is None or risk.size == 0:
    return out
  train = Surv.from_arrays(np.asarray(train_event).astype(bool), np.asarray(train_time, np.float64))
  test = Surv.from_arrays(event, time)
  try:
    out["c_index_ipcw"] = _float(sksm.concordance_index_ipcw(train, test, risk)[0])
  except (ValueError, ZeroDivisionError):
    pass
  if survival_curves is None or bin_times is None:
    return out
  curves = np.asarray(survival_curves, np.float64)
  bin_times = np.asarray(bin_times, np.float64).ravel()
  if curves.shape != (risk.size, bin_times.size):
    raise ValueError(
      f"survival_metrics: survival_curves must be (B, T) = ({risk.size}, {bin_times.size}), got {curves.shape}"
    )
  if np.any(np.diff(bin_times) <= 0):
    raise ValueError(f"survival_metrics: bin_times must be strictly increasing, got {bin_times}")
  inside = (bin_times >= time.min()) & (bin_times < time.max())
  if inside.sum() >= 2:
    try:
      out["integrated_brier_score"] = _float(
        sksm.integrated_brier_score(train, test, curves[:, inside], bin_times[inside])
      )
      out["brier_times"] = bin_times[inside].tolist()
    except ValueError:
      pass
  return out
