"""The prediction tasks: what a model's logits mean, and how they are trained, scored and reported.

Two forms, built by `get_task(name, num_classes)`:

  Classification (diagnosis, grading, subtype): logits (B, K) over K classes; softmax
    probabilities; class-weighted cross-entropy; modality score = summed probability of the
    true class; macro one-vs-rest AUC selects the epoch.
  Survival: logits (B, K) are pre-sigmoid hazards of K discrete time bins; hazards, the
    survival curve S_k = prod_{j<=k} (1 - h_j) and risk = -sum_k S_k; the discrete-time NLL;
    modality score = Harrell's C-index of each modality's risk; C-index selects the epoch.

This module is the one place that decides between the two: training steps, loops, inference,
interpretation and comparisons call the methods below. Traced (jit) functions take and return jax
arrays; host functions (`outputs`, `metrics`, the column builders) take numpy arrays and work in
float64.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from smml_jax.data.labels import (TASK_LABEL_FIELD, TASK_NUM_CLASSES, assign_survival_bins,
                                  fit_survival_cuts)
from smml_jax.losses.classification import (ORIGINAL_CLASS_WEIGHTS, class_weights_from_labels,
                                            weighted_cross_entropy)
from smml_jax.losses.survival import risk_from_logits, survival_nll
from smml_jax.metrics.cindex import concordance
from smml_jax.metrics.evaluation import classification_metrics, survival_metrics

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
  def loss(self, logits: Array, batch: Mapping[str, Array], mask: Optional[Array] = None,
           class_weights: Optional[Array] = None) -> Array:
    """() float32 task loss of (B, K) logits; padding (mask False) and unlabelled rows add nothing."""

  @abc.abstractmethod
  def modality_scores(self, logits: Sequence[Array], batch: Mapping[str, Array],
                      mask: Optional[Array] = None) -> tuple[Array, Array]:
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
  def metrics(self, prediction: np.ndarray, truth: Mapping[str, np.ndarray], *,
              train: Optional[Mapping[str, np.ndarray]] = None,
              bin_times: Optional[np.ndarray] = None,
              logits: Optional[np.ndarray] = None) -> dict[str, Any]:
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


@dataclasses.dataclass(frozen=True)
class Classification(Task):
  """K-class classification (diagnosis, grading, subtype)."""

  kind: str = dataclasses.field(init=False, default="classification")
  selection_metric: str = dataclasses.field(init=False, default="auc")
  table_metrics: tuple[str, ...] = dataclasses.field(init=False, default=(
      "auc", "auc_micro", "accuracy", "balanced_accuracy", "f1", "precision", "sensitivity",
      "specificity"))
  comparison_metrics: tuple[str, ...] = dataclasses.field(init=False, default=(
      "auc", "accuracy", "f1"))

  @property
  def class_names(self) -> tuple[str, ...]:
    names = CLASS_NAMES.get(self.name)
    if names is None or len(names) != self.num_classes:
      return tuple(f"class {k}" for k in range(self.num_classes))
    return names

  def labelled(self, table):
    return np.asarray(table[self.label_field]) >= 0

  def class_weights(self, mode, train):
    if mode == "none":
      return None
    if mode == "original":
      return tuple(ORIGINAL_CLASS_WEIGHTS[self.name])
    if mode == "train":
      labels = np.asarray(train[self.label_field])
      return tuple(float(w) for w in class_weights_from_labels(labels, self.num_classes))
    raise ValueError(f"class weights must be one of {CLASS_WEIGHT_MODES}, got {mode!r}")

  def fit_target(self, truth, train_idx):
    del train_idx
    return np.asarray(truth[self.label_field]).astype(np.int64)

  def outcome(self, truth):
    return np.asarray(truth[self.label_field])

  def loss(self, logits, batch, mask=None, class_weights=None):
    weights = None if class_weights is None else jnp.asarray(class_weights, jnp.float32)
    return weighted_cross_entropy(logits, batch[self.label_field], weights, mask)

  def modality_scores(self, logits, batch, mask=None):
    # score_m = sum_b softmax(out_m[b])[y_b] (README §4); only compared, so a sum is harmless.
    labels = jnp.asarray(batch[self.label_field])
    valid = _valid(labels, mask)
    safe = jnp.where(valid, labels, 0)[:, None]
    scores = []
    for out in logits:
      p = jnp.take_along_axis(jax.nn.softmax(out, axis=-1), safe, axis=-1)[:, 0]
      scores.append(jnp.sum(jnp.where(valid, p, 0.0)))
    return jax.lax.stop_gradient(jnp.stack(scores)), jnp.asarray(False)

  def outputs(self, logits):
    return {"probs": softmax(logits)}

  def prediction(self, logits):
    return softmax(logits)

  def metrics(self, prediction, truth, *, train=None, bin_times=None, logits=None):
    del train, bin_times, logits
    return classification_metrics(np.asarray(truth[self.label_field]), prediction,
                                  self.num_classes)

  def prediction_columns(self, logits):
    probs = softmax(logits)
    columns = self.score_columns(probs)
    columns["pred"] = probs.argmax(axis=1)
    columns["pred_name"] = np.asarray([self.class_names[k] for k in columns["pred"]], object)
    return columns

  def patient_columns(self, group):
    cols = [f"prob_{k}" for k in range(self.num_classes)]
    probs = group[cols].mean().to_numpy()
    probs = probs / probs.sum(axis=1, keepdims=True)
    columns = {c: probs[:, k] for k, c in enumerate(cols)}
    columns["pred"] = probs.argmax(axis=1)
    columns["pred_name"] = [self.class_names[k] for k in columns["pred"]]
    if "label" in group.obj.columns:
      columns["label"] = group["label"].first().to_numpy()
    return columns

  def prediction_meta(self, survival_cuts):
    del survival_cuts
    return {}

  def truth_columns(self, truth):
    labels = truth.get(self.label_field)
    if labels is None or not np.all(np.asarray(labels) >= 0):
      return {}
    return {"label": np.asarray(labels).astype(np.int64)}

  def score_columns(self, prediction):
    return {f"prob_{k}": prediction[:, k] for k in range(prediction.shape[1])}

  def score_from_columns(self, table):
    return np.asarray(table[[f"prob_{k}" for k in range(self.num_classes)]], np.float64)

  def truth_from_columns(self, table):
    return {self.label_field: np.asarray(table["label"])} if "label" in table.columns else {}

  def attribution_target(self, logits):
    classes = jnp.argmax(logits, axis=-1)

    def target(z):
      p = jax.nn.softmax(z, axis=-1)
      return jnp.take_along_axis(p, classes[:, None].astype(jnp.int32), axis=-1)[:, 0]

    return target

  @property
  def attribution_target_name(self) -> str:
    return "probability of the predicted class"


@dataclasses.dataclass(frozen=True)
class Survival(Task):
  """Discrete-time survival over `num_classes` bins; `alpha` weighs the NLL's extra
  uncensored term (0 in the original)."""

  alpha: float = 0.0
  kind: str = dataclasses.field(init=False, default="survival")
  selection_metric: str = dataclasses.field(init=False, default="c_index")
  table_metrics: tuple[str, ...] = dataclasses.field(init=False, default=(
      "c_index", "c_index_ipcw", "integrated_brier_score"))
  comparison_metrics: tuple[str, ...] = dataclasses.field(init=False, default=("c_index",))

  @property
  def class_names(self) -> tuple[str, ...]:
    return tuple(f"bin {k}" for k in range(self.num_classes))

  def labelled(self, table):
    return np.asarray(table["surv_time"]) >= 0

  def class_weights(self, mode, train):
    del train
    if mode not in CLASS_WEIGHT_MODES:
      raise ValueError(f"class weights must be one of {CLASS_WEIGHT_MODES}, got {mode!r}")
    return None  # the survival NLL is unweighted

  def fit_target(self, truth, train_idx):
    time, event = np.asarray(truth["surv_time"]), np.asarray(truth["event"])
    train_idx = np.asarray(train_idx, np.int64)
    cuts = fit_survival_cuts(time[train_idx], event[train_idx], self.num_classes)
    return assign_survival_bins(time, cuts)

  def outcome(self, truth):
    return np.asarray(truth["surv_time"]), np.asarray(truth["event"])

  def loss(self, logits, batch, mask=None, class_weights=None):
    del class_weights
    return survival_nll(logits, batch[self.label_field], batch["event"], mask, alpha=self.alpha)

  def modality_scores(self, logits, batch, mask=None):
    # Each modality's batch C-index; a batch without a comparable pair (e.g. all censored)
    # cannot rank the modalities, so it skips coordination.
    results = [concordance(risk_from_logits(out), batch["surv_time"], batch["event"], mask)
               for out in logits]
    scores = jnp.stack([r.cindex for r in results])
    return jax.lax.stop_gradient(scores), results[0].comparable == 0

  def outputs(self, logits):
    hazards, curve, risk = survival_outputs(logits)
    return {"hazards": hazards, "curve": curve, "risk": risk}

  def prediction(self, logits):
    return survival_outputs(logits)[2]

  def metrics(self, prediction, truth, *, train=None, bin_times=None, logits=None):
    curves = None
    if bin_times is not None:
      if logits is None:
        raise ValueError("Survival.metrics: bin_times needs the logits (for the curves)")
      bin_times = np.asarray(bin_times)
      curves = survival_outputs(logits)[1][:, :len(bin_times)]
    train = train or {}
    return survival_metrics(prediction, np.asarray(truth["surv_time"]), np.asarray(truth["event"]),
                            train_time=train.get("surv_time"), train_event=train.get("event"),
                            survival_curves=curves, bin_times=bin_times)

  def prediction_columns(self, logits):
    hazards, curve, risk = survival_outputs(logits)
    columns = {f"hazard_{k}": hazards[:, k] for k in range(hazards.shape[1])}
    columns.update({f"surv_{k}": curve[:, k] for k in range(curve.shape[1])})
    columns["risk"] = risk
    columns["pred_bin"] = pred_bin(curve)
    return columns

  def patient_columns(self, group):
    cols = [f"surv_{k}" for k in range(self.num_classes)]
    curve = group[cols].mean().to_numpy()
    columns = {c: curve[:, k] for k, c in enumerate(cols)}
    columns["risk"] = -curve.sum(axis=1)
    columns["pred_bin"] = pred_bin(curve)
    for c in ("time", "event"):
      if c in group.obj.columns:
        columns[c] = group[c].first().to_numpy()
    return columns

  def prediction_meta(self, survival_cuts):
    return {"survival_cut_points_days": list(survival_cuts)}

  def truth_columns(self, truth):
    time = truth.get("surv_time")
    if time is None or not np.all(np.asarray(time) >= 0):
      return {}
    return {"time": np.asarray(time).astype(np.float64),
            "event": np.asarray(truth["event"]).astype(np.int64)}

  def score_columns(self, prediction):
    return {"risk": prediction}

  def score_from_columns(self, table):
    return np.asarray(table["risk"], np.float64)

  def truth_from_columns(self, table):
    if "time" not in table.columns:
      return {}
    return {"surv_time": np.asarray(table["time"]), "event": np.asarray(table["event"])}

  def attribution_target(self, logits):
    del logits
    return risk_from_logits

  @property
  def attribution_target_name(self) -> str:
    return "risk"


def pred_bin(curve: np.ndarray) -> np.ndarray:
  """(n, K) survival curves -> (n,) the first bin whose survival drops below 0.5 (K-1 if none)."""
  below = np.asarray(curve) < 0.5
  return np.where(below.any(axis=1), below.argmax(axis=1), below.shape[1] - 1)


TASK_NAMES = tuple(sorted(TASK_NUM_CLASSES))


def get_task(name: str, num_classes: Optional[int] = None, *, survival_alpha: float = 0.0) -> Task:
  """The task called `name` ('diagnosis' | 'grading' | 'subtype' | 'survival').

  Args:
    num_classes: K (classes, or survival bins); default the task's (`TASK_NUM_CLASSES`).
    survival_alpha: the survival NLL's extra uncensored weight (survival only).
  """
  if name not in TASK_NUM_CLASSES:
    raise ValueError(f"unknown task {name!r}; expected one of {list(TASK_NAMES)}")
  k = TASK_NUM_CLASSES[name] if num_classes is None else int(num_classes)
  if name == "survival":
    return Survival(name, k, alpha=float(survival_alpha))
  return Classification(name, k)
