"""Classification figures: one-vs-rest ROC curves and the confusion matrix."""

from __future__ import annotations

import pathlib
from typing import Sequence

import numpy as np
from sklearn.metrics import auc as _auc
from sklearn.metrics import roc_curve

from smml_jax.evaluate.figures import _common
from smml_jax.evaluate.figures._common import PathLike, plt


def plot_roc(path: PathLike, labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str]) -> pathlib.Path:
  """One-vs-rest ROC curve per class, AUC in the legend (classes absent or universal: 'n/a').

  Args:
    labels: (N,) int class labels.
    probs: (N, K) predicted class probabilities.
    class_names: K names.
  """
  labels = np.asarray(labels)
  probs = np.asarray(probs, np.float64)
  if probs.ndim != 2 or probs.shape[0] != labels.shape[0] or probs.shape[1] != len(class_names):
    raise ValueError(
      f"plot_roc: expected labels (N,) and probs (N, {len(class_names)}), got {labels.shape} and {probs.shape}"
    )
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
  return _common._save(fig, path)


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
      ax.text(j, i, f"{cm[i, j]:g}", ha="center", va="center", color="white" if norm[i, j] > 0.5 else "black")
  ax.set_xticks(range(k), class_names, rotation=30, ha="right")
  ax.set_yticks(range(k), class_names)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  ax.set_title("confusion matrix (colour: fraction of true class)")
  fig.colorbar(img, ax=ax, fraction=0.046, pad=0.04)
  return _common._save(fig, path)
