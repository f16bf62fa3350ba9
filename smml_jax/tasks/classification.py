"""Classification: K classes, softmax probabilities, class-weighted cross-entropy, macro AUC."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from smml_jax.losses.classification import ORIGINAL_CLASS_WEIGHTS, class_weights_from_labels, weighted_cross_entropy
from smml_jax.losses.distillation import softmax_kd
from smml_jax.models import linear
from smml_jax.metrics.evaluation import classification_metrics
from smml_jax.tasks.base import CLASS_NAMES, CLASS_WEIGHT_MODES, Task, _valid, softmax


@dataclasses.dataclass(frozen=True)
class Classification(Task):
  """K-class classification (diagnosis, grading, subtype)."""

  kind: str = dataclasses.field(init=False, default="classification")
  selection_metric: str = dataclasses.field(init=False, default="auc")
  table_metrics: tuple[str, ...] = dataclasses.field(
    init=False,
    default=("auc", "auc_micro", "accuracy", "balanced_accuracy", "f1", "precision", "sensitivity", "specificity"),
  )
  comparison_metrics: tuple[str, ...] = dataclasses.field(init=False, default=("auc", "accuracy", "f1"))
  selectable_metrics: tuple[str, ...] = dataclasses.field(
    init=False,
    default=(
      "auc",
      "auc_micro",
      "accuracy",
      "balanced_accuracy",
      "f1",
      "precision",
      "sensitivity",
      "specificity",
      "num_examples",
    ),
  )

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

  def fit_predict_linear(self, x_train, y_train, x_val, y_val, x_test):
    return linear.fit_predict_logistic(x_train, y_train, x_val, y_val, x_test, self.num_classes)

  def loss(self, logits, batch, mask=None, class_weights=None):
    weights = None if class_weights is None else jnp.asarray(class_weights, jnp.float32)
    return weighted_cross_entropy(logits, batch[self.label_field], weights, mask)

  def distillation_loss(self, student_logits, teacher_logits, *, temperature, mask=None):
    # KL over the classes' softmax.
    return softmax_kd(student_logits, teacher_logits, temperature=temperature, mask=mask)

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
    return classification_metrics(np.asarray(truth[self.label_field]), prediction, self.num_classes)

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
