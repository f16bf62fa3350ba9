"""The task interface and the host-side numerics its two forms share."""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from smml_jax.data.labels import TASK_LABEL_FIELD

Array = jax.Array

CLASS_NAMES = {
  "grading": ("G2", "G3", "G4"),
  "subtype": ("GBM (IDH-wt)", "astrocytoma", "oligodendroglioma"),
  "diagnosis": ("GBM IDH-wt", "astrocytoma G4", "astrocytoma G2/3", "oligodendroglioma"),
}
CLASS_WEIGHT_MODES = ("train", "original", "none")


def softmax(logits: np.ndarray) -> np.ndarray:
  """(n, K) logits -> (n, K) float64 class probabilities (rows sum to one)."""
  z = np.asarray(logits, np.float64)
  z = np.exp(z - z.max(axis=-1, keepdims=True))
  return z / z.sum(axis=-1, keepdims=True)


def survival_outputs(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(n, K) hazard logits -> float64 hazards (n, K), curve S_k = prod_{j<=k}(1 - h_j) (n, K),
  risk = -sum_k S_k (n,) (higher = shorter expected survival)."""
  hazards = 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64)))
  curve = np.cumprod(1.0 - hazards, axis=-1)
  return hazards, curve, -curve.sum(axis=-1)


def _valid(labels: Array, mask: Optional[Array]) -> Array:
  valid = jnp.asarray(labels) >= 0
  return valid if mask is None else valid & jnp.asarray(mask, bool)


def _optional(value) -> float:
  return float("nan") if value is None else float(value)


@dataclasses.dataclass(frozen=True)
class Task(abc.ABC):
  """A task of `num_classes` outputs (classes, or survival time bins).

  Batches are mappings with the data pipeline's field names: the task's `label_field` (class
  codes, or the survival bin), and for survival `surv_time` (days) and `event` (1 = death).
  """

  name: str
  num_classes: int

  kind: str = dataclasses.field(init=False, default="")
  selection_metric: str = dataclasses.field(init=False, default="")
  # The metrics a run's console table shows, and the ones a comparison aggregates.
  table_metrics: tuple[str, ...] = dataclasses.field(init=False, default=())
  comparison_metrics: tuple[str, ...] = dataclasses.field(init=False, default=())
  # Validation metrics `train.selection_metric` may name (higher is better; `num_examples` is
  # constant, so it keeps the first epoch: for smoke runs whose validation metric is undefined).
  selectable_metrics: tuple[str, ...] = dataclasses.field(init=False, default=())

  @property
  def label_field(self) -> str:
    return TASK_LABEL_FIELD[self.name]

  @property
  @abc.abstractmethod
  def class_names(self) -> tuple[str, ...]:
    """One display name per output."""

  @abc.abstractmethod
  def labelled(self, table: Mapping[str, np.ndarray]) -> np.ndarray:
    """(n,) bool: the rows of a slide/patient table that carry what the task trains on."""

  @abc.abstractmethod
  def class_weights(self, mode: str, train: Mapping[str, np.ndarray]) -> Optional[tuple[float, ...]]:
    """Loss class weights: 'train' (inverse frequency in the `train` table's labels), 'original'
    (the original's fixed weights) or 'none' (None)."""

  @abc.abstractmethod
  def fit_target(self, truth: Mapping[str, np.ndarray], train_idx: np.ndarray) -> np.ndarray:
    """(n,) int64 training targets of every row: class codes, or survival bins whose cut points
    are fitted on the `train_idx` rows' event times."""

  @abc.abstractmethod
  def outcome(self, truth: Mapping[str, np.ndarray]) -> Any:
    """What a classical model fits: (n,) class codes, or the pair (time (n,), event (n,))."""

  @abc.abstractmethod
  def fit_predict_linear(self, x_train, y_train, x_val, y_val, x_test) -> np.ndarray:
    """The classical reference (`models.linear`) fitted on (N, F) features and `outcome`s:
    (N_test, K) class probabilities, or (N_test,) risk (higher = shorter survival)."""

  @abc.abstractmethod
  def loss(
    self, logits: Array, batch: Mapping[str, Array], mask: Optional[Array] = None, class_weights: Optional[Array] = None
  ) -> Array:
    """() float32 task loss of (B, K) logits; padding (mask False) and unlabelled rows add nothing."""

  def distillation_loss(
    self, student_logits: Array, teacher_logits: Array, *, temperature: float, mask: Optional[Array] = None
  ) -> Array:
    """() temperature-scaled KD of (B, K) student logits towards a teacher's (T^2 KL)."""
    raise NotImplementedError(f"task {self.name!r} has no distillation loss")

  @abc.abstractmethod
  def modality_scores(
    self, logits: Sequence[Array], batch: Mapping[str, Array], mask: Optional[Array] = None
  ) -> tuple[Array, Array]:
    """(scores (M,), skip ()) of M modalities' logits (B, K) each, for gradient coordination.

    Higher = stronger modality; `skip` True means the batch cannot rank them (coordinate
    nothing). No gradient flows through either.
    """

  @abc.abstractmethod
  def outputs(self, logits: np.ndarray) -> dict[str, np.ndarray]:
    """Host: (n, K) logits -> what they mean (float64 arrays, see the module docstring)."""

  @abc.abstractmethod
  def prediction(self, logits: np.ndarray) -> np.ndarray:
    """Host: (n, K) logits -> the score the metrics rank: probabilities (n, K) or risk (n,)."""

  @abc.abstractmethod
  def metrics(
    self,
    prediction: np.ndarray,
    truth: Mapping[str, np.ndarray],
    *,
    train: Optional[Mapping[str, np.ndarray]] = None,
    bin_times: Optional[np.ndarray] = None,
    logits: Optional[np.ndarray] = None,
  ) -> dict[str, Any]:
    """Host metrics of one split.

    Args:
      prediction: `prediction(logits)` (or a classical model's probabilities / risk).
      truth: the split's label field (classification) or `surv_time` and `event` (survival).
      train: the training split's `surv_time` / `event` (survival's IPCW C-index and Brier).
      bin_times: (T,) the survival bins' upper cut points (days), with `logits` for the curves.
      logits: (n, K) logits, needed with `bin_times`.
    """

  @abc.abstractmethod
  def prediction_columns(self, logits: np.ndarray) -> dict[str, np.ndarray]:
    """Host: a prediction table's model columns (prob_<k>, pred, pred_name; or hazard_<k>,
    surv_<k>, risk, pred_bin)."""

  @abc.abstractmethod
  def patient_columns(self, group) -> dict[str, np.ndarray]:
    """Host: patient-level columns of a slide prediction table grouped by patient (a pandas
    GroupBy): mean class probabilities (renormalised), or the mean survival curve with its risk
    (= the mean slide risk) and pred_bin; plus the patient's known outcome."""

  @abc.abstractmethod
  def prediction_meta(self, survival_cuts: Sequence[float]) -> dict[str, Any]:
    """What a predictions file records about the outputs' meaning beyond the class names."""

  @abc.abstractmethod
  def truth_columns(self, truth: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Host: a prediction table's known-outcome columns (label; or time, event); none when any
    row lacks the outcome."""

  @abc.abstractmethod
  def score_columns(self, prediction: np.ndarray) -> dict[str, np.ndarray]:
    """Host: `prediction` as table columns (prob_<k>; or risk)."""

  @abc.abstractmethod
  def score_from_columns(self, table) -> np.ndarray:
    """Host: the prediction held in a table's `score_columns` / `prediction_columns`."""

  @abc.abstractmethod
  def truth_from_columns(self, table) -> dict[str, np.ndarray]:
    """Host: a table's `truth_columns` as `metrics`' truth mapping; {} when absent."""

  @abc.abstractmethod
  def attribution_target(self, logits: Array) -> Callable[[Array], Array]:
    """The scalar per example that attributions explain, fixed at the real input's (B, K) logits."""

  @property
  @abc.abstractmethod
  def attribution_target_name(self) -> str:
    """What `attribution_target` is, in words."""

  def headline(self, table) -> tuple[str, float]:
    """(selection metric, value) of a prediction table; NaN when its outcomes are absent."""
    truth = self.truth_from_columns(table)
    if not truth:
      return self.selection_metric, float("nan")
    value = self.metrics(self.score_from_columns(table), truth)[self.selection_metric]
    return self.selection_metric, _optional(value)


def pred_bin(curve: np.ndarray) -> np.ndarray:
  """(n, K) survival curves -> (n,) the first bin whose survival drops below 0.5 (K-1 if none)."""
  below = np.asarray(curve) < 0.5
  return np.where(below.any(axis=1), below.argmax(axis=1), below.shape[1] - 1)
