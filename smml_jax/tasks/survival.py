"""Survival: K discrete time bins, sigmoid hazards, the survival curve and risk, the NLL, C-index."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from smml_jax.data.labels import assign_survival_bins, fit_survival_cuts
from smml_jax.losses.distillation import sigmoid_kd
from smml_jax.losses.survival import hazards_from_logits, risk_from_logits, survival_curve, survival_nll
from smml_jax.metrics.cindex import concordance
from smml_jax.models import linear
from smml_jax.metrics.evaluation import survival_metrics
from smml_jax.tasks.base import CLASS_WEIGHT_MODES, Task, _valid, pred_bin, survival_outputs

COORDINATION_SCORES = ("cindex", "confidence")


def observed_confidence(logits: jax.Array, bins: jax.Array, event: jax.Array) -> jax.Array:
  """(B,) the probability the model gives to what was observed of each patient.

  With hazards h = sigmoid(logits) (B, K) and survival S_k = prod_{j<=k} (1 - h_j), S_{-1} = 1,
  for the patient's time bin y:
    uncensored (event 1): P(T = y) = h_y S_{y-1}, the mass of the true event bin;
    censored (event 0):   P(T > y) = S_y, survival beyond the censoring bin
  (the survival NLL's two terms, exponentiated: its per-patient likelihood for alpha = 0).
  Rows with a negative bin get an arbitrary value; mask them.
  """
  hazards = hazards_from_logits(logits)
  surv = survival_curve(hazards)
  before = jnp.concatenate([jnp.ones_like(surv[:, :1]), surv[:, :-1]], axis=1)
  y = jnp.maximum(jnp.asarray(bins), 0)[:, None]
  pick = lambda a: jnp.take_along_axis(a, y, axis=1)[:, 0]
  return jnp.where(jnp.asarray(event) == 1, pick(hazards) * pick(before), pick(surv))


@dataclasses.dataclass(frozen=True)
class Survival(Task):
  """Discrete-time survival over `num_classes` bins; `alpha` weighs the NLL's extra
  uncensored term (0 in the original); `coordination_score` ranks the modalities for gradient
  coordination: 'cindex' (the paper's batch C-index) or 'confidence' (`observed_confidence`
  summed over the batch, the follow-up's)."""

  alpha: float = 0.0
  coordination_score: str = "cindex"
  kind: str = dataclasses.field(init=False, default="survival")
  selection_metric: str = dataclasses.field(init=False, default="c_index")
  table_metrics: tuple[str, ...] = dataclasses.field(
    init=False, default=("c_index", "c_index_ipcw", "integrated_brier_score")
  )
  comparison_metrics: tuple[str, ...] = dataclasses.field(init=False, default=("c_index",))
  selectable_metrics: tuple[str, ...] = dataclasses.field(
    init=False, default=("c_index", "c_index_ipcw", "num_examples")
  )

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

  def fit_predict_linear(self, x_train, y_train, x_val, y_val, x_test):
    return linear.fit_predict_cox(x_train, y_train, x_val, y_val, x_test)

  def loss(self, logits, batch, mask=None, class_weights=None):
    del class_weights
    return survival_nll(logits, batch[self.label_field], batch["event"], mask, alpha=self.alpha)

  def __post_init__(self):
    if self.coordination_score not in COORDINATION_SCORES:
      raise ValueError(
        f"survival coordination_score must be one of {COORDINATION_SCORES}, got {self.coordination_score!r}"
      )

  def distillation_loss(self, student_logits, teacher_logits, *, temperature, mask=None):
    # KL per time bin's hazard (sigmoid).
    return sigmoid_kd(student_logits, teacher_logits, temperature=temperature, mask=mask)

  def modality_scores(self, logits, batch, mask=None):
    if self.coordination_score == "confidence":
      # Every labelled patient counts, censored or not: no batch is left unranked.
      valid = _valid(batch[self.label_field], mask)
      scores = jnp.stack(
        [
          jnp.sum(jnp.where(valid, observed_confidence(out, batch[self.label_field], batch["event"]), 0.0))
          for out in logits
        ]
      )
      return jax.lax.stop_gradient(scores), jnp.asarray(False)
    # Each modality's batch C-index; a batch without a comparable pair (e.g. all censored)
    # cannot rank the modalities, so it skips coordination.
    results = [concordance(risk_from_logits(out), batch["surv_time"], batch["event"], mask) for out in logits]
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
      curves = survival_outputs(logits)[1][:, : len(bin_times)]
    train = train or {}
    return survival_metrics(
      prediction,
      np.asarray(truth["surv_time"]),
      np.asarray(truth["event"]),
      train_time=train.get("surv_time"),
      train_event=train.get("event"),
      survival_curves=curves,
      bin_times=bin_times,
    )

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
    return {"time": np.asarray(time).astype(np.float64), "event": np.asarray(truth["event"]).astype(np.int64)}

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
