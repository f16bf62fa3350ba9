"""Host-side classification and survival metrics."""

import numpy as np
import pytest
from sklearn import metrics as skm
from sksurv.metrics import concordance_index_censored, concordance_index_ipcw, integrated_brier_score
from sksurv.util import Surv

from smml_jax.metrics.evaluation import classification_metrics, survival_metrics


def _data(seed=0, n=40, k=4):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, k, n)
  probs = rng.dirichlet(np.ones(k), n) + 0.6 * np.eye(k)[labels] * rng.random((n, 1))
  return labels, probs / probs.sum(1, keepdims=True)


def test_classification_equals_sklearn_when_all_classes_present():
  labels, probs = _data()
  got = classification_metrics(labels, probs, 4)
  preds = probs.argmax(1)
  assert got["num_examples"] == 40
  assert got["accuracy"] == pytest.approx(skm.accuracy_score(labels, preds))
  assert got["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(labels, preds))
  assert got["f1"] == pytest.approx(skm.f1_score(labels, preds, average="macro"))
  assert got["precision"] == pytest.approx(skm.precision_score(labels, preds, average="macro"))
  assert got["sensitivity"] == pytest.approx(skm.recall_score(labels, preds, average="macro"))
  assert got["auc"] == pytest.approx(skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
  onehot = np.eye(4)[labels]
  assert got["auc_micro"] == pytest.approx(skm.roc_auc_score(onehot, probs, average="micro"))
  assert got["confusion_matrix"] == skm.confusion_matrix(labels, preds).tolist()
  cm = np.asarray(got["confusion_matrix"])
  fp = cm.sum(0) - np.diag(cm)
  tn = cm.sum() - cm.sum(0) - cm.sum(1) + np.diag(cm)
  assert got["specificity"] == pytest.approx(np.mean(tn / (tn + fp)))


def test_specificity_hand_case():
  labels = np.array([0, 0, 1, 1])
  probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.4, 0.6]])
  got = classification_metrics(labels, probs, 2)
  # Class 0: TN = 2 (both class-1 right), FP = 0; class 1: TN = 1, FP = 1.
  assert got["specificity"] == pytest.approx((2 / 2 + 1 / 2) / 2)
  assert got["confusion_matrix"] == [[1, 1], [0, 2]]
  assert got["auc"] == pytest.approx(skm.roc_auc_score(labels, probs[:, 1]))


def test_absent_class_auc_over_present_classes_and_missing_labels_dropped():
  labels, probs = _data(1)
  labels[labels == 2] = 0
  labels_with_missing = np.concatenate([labels, [-1, -1]])
  probs_with_missing = np.concatenate([probs, probs[:2]])
  got = classification_metrics(labels_with_missing, probs_with_missing, 4)
  assert got["num_examples"] == labels.size
  assert got["auc_classes"] == [0, 1, 3]
  expected = np.mean([skm.roc_auc_score(labels == k, probs[:, k]) for k in (0, 1, 3)])
  assert got["auc"] == pytest.approx(expected)
  assert np.asarray(got["confusion_matrix"])[2].sum() == 0
  single = classification_metrics(np.zeros(5, int), probs[:5], 4)
  assert single["auc"] is None and single["accuracy"] is not None


def test_classification_bad_shapes():
  with pytest.raises(ValueError, match="probs must be"):
    classification_metrics(np.zeros(3, int), np.ones((3, 2)), 4)
  with pytest.raises(ValueError, match="out of range"):
    classification_metrics(np.array([0, 5]), np.ones((2, 4)), 4)


def _survival(seed, n):
  rng = np.random.default_rng(seed)
  time = rng.exponential(600.0, n) + 1.0
  event = rng.random(n) < 0.6
  return rng.normal(size=n) - time / 600.0, time, event


def test_survival_metrics_equal_sksurv():
  risk, time, event = _survival(0, 50)
  _, train_time, train_event = _survival(1, 200)
  train_time = np.concatenate([train_time, [time.max() + 100.0]])  # follow-up covers the test set
  train_event = np.concatenate([train_event, [False]])
  rng = np.random.default_rng(2)
  curves = np.cumprod(rng.uniform(0.7, 0.99, (50, 4)), axis=1)
  bin_times = np.array([200.0, 400.0, 800.0, 1e6])  # the last lies beyond the test follow-up
  got = survival_metrics(risk, time, event, train_time, train_event, curves, bin_times)
  assert got["c_index"] == pytest.approx(concordance_index_censored(event, time, risk)[0])
  train, test = Surv.from_arrays(train_event, train_time), Surv.from_arrays(event, time)
  assert got["c_index_ipcw"] == pytest.approx(concordance_index_ipcw(train, test, risk)[0])
  assert got["brier_times"] == [200.0, 400.0, 800.0]
  assert got["integrated_brier_score"] == pytest.approx(
    integrated_brier_score(train, test, curves[:, :3], bin_times[:3])
  )
  assert got["num_events"] == int(event.sum())


def test_survival_metrics_never_crash_when_not_computable():
  risk, time, event = _survival(3, 10)
  censored = survival_metrics(risk, time, np.zeros(10, bool), time, event)
  assert censored["c_index"] is None and censored["c_index_ipcw"] is None
  no_train = survival_metrics(risk, time, event)
  assert no_train["c_index"] is not None
  assert no_train["c_index_ipcw"] is None and no_train["integrated_brier_score"] is None
  one_time = survival_metrics(risk, time, event, time, event, np.ones((10, 1)), np.array([time.min()]))
  assert one_time["integrated_brier_score"] is None
  with pytest.raises(ValueError, match="same length"):
    survival_metrics(risk, time[:5], event)
  with pytest.raises(ValueError, match="survival_curves must be"):
    survival_metrics(risk, time, event, time, event, np.ones((10, 2)), np.array([1.0, 2.0, 3.0]))
