"""The prediction tasks: what a model's logits mean, and how they are trained, scored and reported.

Two forms, built by `get_task(name, num_classes)`:

  Classification (diagnosis, grading, subtype): logits (B, K) over K classes; softmax
    probabilities; class-weighted cross-entropy; modality score = summed probability of the
    true class; macro one-vs-rest AUC selects the epoch.
  Survival: logits (B, K) are pre-sigmoid hazards of K discrete time bins; hazards, the
    survival curve S_k = prod_{j<=k} (1 - h_j) and risk = -sum_k S_k; the discrete-time NLL;
    modality score = Harrell's C-index of each modality's risk (or, with coordination_score
    'confidence', the summed probability each modality gives to what was observed:
    `survival.observed_confidence`); C-index selects the epoch.

This package is the one place that decides between the two: training steps, loops, inference,
interpretation and comparisons call the methods below. Traced (jit) functions take and return jax
arrays; host functions (`outputs`, `metrics`, the column builders) take numpy arrays and work in
float64.
"""

from __future__ import annotations

from typing import Optional

from smml_jax.data.labels import TASK_NUM_CLASSES
from smml_jax.tasks.base import CLASS_NAMES, Task, pred_bin, softmax, survival_outputs
from smml_jax.tasks.classification import Classification
from smml_jax.tasks.survival import COORDINATION_SCORES, Survival

TASK_NAMES = tuple(sorted(TASK_NUM_CLASSES))


def get_task(
  name: str, num_classes: Optional[int] = None, *, survival_alpha: float = 0.0, coordination_score: str = "auto"
) -> Task:
  """The task called `name` ('diagnosis' | 'grading' | 'subtype' | 'survival').

  Args:
    num_classes: K (classes, or survival bins); default the task's (`TASK_NUM_CLASSES`).
    survival_alpha: the survival NLL's extra uncensored weight (survival only).
    coordination_score: how gradient coordination ranks the modalities: 'auto' (the paper's:
      summed true-class probability, or survival's batch C-index), 'confidence' (summed
      probability of what was observed; survival: `survival.observed_confidence`) or 'cindex'
      (survival only).
  """
  if name not in TASK_NUM_CLASSES:
    raise ValueError(f"unknown task {name!r}; expected one of {list(TASK_NAMES)}")
  k = TASK_NUM_CLASSES[name] if num_classes is None else int(num_classes)
  if coordination_score not in ("auto",) + COORDINATION_SCORES:
    raise ValueError(f"coordination_score must be 'auto' or one of {COORDINATION_SCORES}, got {coordination_score!r}")
  if name == "survival":
    score = "cindex" if coordination_score == "auto" else coordination_score
    return Survival(name, k, alpha=float(survival_alpha), coordination_score=score)
  if coordination_score == "cindex":
    raise ValueError(
      f"coordination_score 'cindex' is a survival score; task {name!r} ranks the "
      "modalities by confidence ('auto' or 'confidence')"
    )
  return Classification(name, k)
