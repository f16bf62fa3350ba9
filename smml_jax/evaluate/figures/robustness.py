"""The robustness curve: a metric against the fraction of training patients without expression,
with models that do not depend on that fraction drawn as horizontal reference lines."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from smml_jax.evaluate.figures._common import PathLike, _save, plt


def robustness_figure(
  curve: Sequence[tuple[float, float, float]],
  references: Mapping[str, tuple[float, float]],
  *,
  ylabel: str = "test metric",
  spread: str = "seeds",
) -> plt.Figure:
  """The figure (not saved).

  Args:
    curve: (percent without expression, mean, std) per point, std over the runs named by `spread` (NaN: no bar).
    references: {model: (mean, std)}: a horizontal line at the mean and a band of ± std.
    ylabel: the metric's axis label.
    spread: what the curve's std is over, for the legend ("seeds", "3 folds x 3 seeds").
  """
  fig, ax = plt.subplots(figsize=(4.8, 3.4))
  x, mean, std = (np.asarray(v, np.float64) for v in zip(*curve)) if curve else ([], [], [])
  ax.errorbar(x, mean, yerr=np.nan_to_num(std), marker="o", capsize=3, label=f"subspace (mean ± std over {spread})")
  colors = plt.get_cmap("tab10")(np.arange(1, len(references) + 1))
  for (name, (m, s)), color in zip(references.items(), colors):
    ax.axhline(m, color=color, linestyle="--", linewidth=1.2, label=f"{name} (slides only)")
    if np.isfinite(s):
      ax.axhspan(m - s, m + s, color=color, alpha=0.12, linewidth=0)
  ax.set_xlabel("training patients without expression (%)")
  ax.set_ylabel(ylabel)
  ax.set_title("Grading: robustness to missing expression")
  ax.legend(fontsize=7)
  fig.tight_layout()
  return fig


def plot_robustness(
  curve: Sequence[tuple[float, float, float]],
  references: Mapping[str, tuple[float, float]],
  path: PathLike,
  *,
  ylabel: str = "test metric",
  spread: str = "seeds",
):
  """Writes `robustness_figure(...)` as a PNG at `path`; returns the path."""
  return _save(robustness_figure(curve, references, ylabel=ylabel, spread=spread), path)
