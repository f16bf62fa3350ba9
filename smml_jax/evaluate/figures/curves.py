"""Training and validation curves of a run's metrics.jsonl."""

from __future__ import annotations

import json
import math
import pathlib
from typing import Optional

import matplotlib.ticker
import numpy as np
import pandas as pd

from smml_jax.evaluate.figures import _common
from smml_jax.evaluate.figures._common import PathLike, plt

# Keys of a metrics.jsonl line that index a record rather than measure something.
_INDEX_KEYS = ("epoch", "step", "split")


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


def plot_training_curves(
  path: PathLike, metrics_jsonl_path: PathLike, best_epoch: Optional[int] = None
) -> pathlib.Path:
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
  split = frame["split"].fillna("all").astype(str) if "split" in frame.columns else pd.Series("all", index=frame.index)
  metrics = [
    c for c in frame.columns if c not in _INDEX_KEYS and c not in _UNINFORMATIVE and frame[c].map(_is_number).any()
  ]
  evaluated = lambda c: bool((frame[c].map(_is_number) & (split != "train")).any())
  metrics.sort(key=lambda c: not evaluated(c))  # evaluation metrics first, then training ones
  if not metrics:
    raise ValueError(
      f"plot_training_curves: {metrics_jsonl_path} has no numeric metric besides "
      f"{list(_INDEX_KEYS) + list(_UNINFORMATIVE)}"
    )
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
      ax.axvline(best_epoch, color="black", ls="--", lw=0.8, label=f"selected (epoch {best_epoch})")
    title = metric
    if metric == "slides_per_s" and compile_s is not None:
      title = f"slides_per_s (after compilation: {compile_s:.1f} s, not counted)"
    ax.set_title(title, fontsize=9 if len(title) > 30 else None)
    ax.set_xlabel(x_key or "record")
    if x_key == "epoch":
      ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.legend(fontsize=7)
  for ax in axes.ravel()[len(metrics) :]:
    ax.axis("off")
  fig.tight_layout()
  return _common._save(fig, path)
