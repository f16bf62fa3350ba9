"""PNG figures for the interpretability report (matplotlib, Agg backend), one module a family.

Every function writes one PNG and returns the path it wrote, except `plot_km_risk_groups`, which
returns the log-rank p-value it printed in the title.

  slides          sampling points beside attention mass per slide; gene importance bars
  classification  ROC curves, confusion matrix
  survival        Kaplan-Meier risk groups (log-rank), time-dependent AUC
  curves          training and validation curves of metrics.jsonl
  robustness      a metric against the fraction of patients without expression, reference lines
"""

from smml_jax.evaluate.figures import _common
from smml_jax.evaluate.figures._common import PathLike
from smml_jax.evaluate.figures.classification import plot_confusion, plot_roc
from smml_jax.evaluate.figures.curves import plot_training_curves, read_metrics_jsonl
from smml_jax.evaluate.figures.robustness import plot_robustness, robustness_figure
from smml_jax.evaluate.figures.slides import outside_fraction, plot_gene_importance, plot_slide_sampling
from smml_jax.evaluate.figures.survival import (
  km_tick_times,
  numbers_at_risk,
  plot_km_risk_groups,
  plot_time_dependent_auc,
  risk_groups,
  time_dependent_auc,
)
