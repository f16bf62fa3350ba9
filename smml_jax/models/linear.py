"""The classical reference: L2 logistic regression (classification) and elastic-net Cox (survival).

Features are standardised with statistics of the training patients. With a validation set the
regularisation strength is picked from a small grid on it (validation log-loss for classification,
validation Harrell's C-index for survival); without one (protocol `mcat5`, whose `val` is the test
fold) the fixed defaults `LinearConfig.default_c` (L2, C = 0.01) / `default_alpha` (elastic net,
alpha = 0.03, l1_ratio = 0.5) are used, so nothing is selected on the held-out fold. The defaults
were fixed before any mcat5 result was seen; C = 0.01 is also what pnas15 validation picks in most
splits.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Sequence

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.preprocessing import StandardScaler
from sksurv.linear_model import CoxnetSurvivalAnalysis
from sksurv.metrics import concordance_index_censored
from sksurv.util import Surv


@dataclasses.dataclass(frozen=True)
class LinearConfig:
  """Regularisation grids and the fixed defaults used without a validation set."""

  c_grid: tuple[float, ...] = (1e-3, 1e-2, 1e-1)
  default_c: float = 1e-2
  # Weaker penalties than 0.03 diverge on the PORPOISE features (p > n).
  alpha_grid: tuple[float, ...] = (0.3, 0.1, 0.03)
  default_alpha: float = 0.03
  l1_ratio: float = 0.5
  max_iter: int = 2000


def _check_x(name: str, x) -> np.ndarray:
  x = np.asarray(x, np.float64)
  if x.ndim != 2:
    raise ValueError(f"{name} must be (N, F), got shape {x.shape}")
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{name} holds NaN/inf; normalise / impute the features first")
  return x


def _checked(x_train, x_val, y_val, x_test):
  """x_train, x_val, x_test as finite (N, F) float64 (x_val None: no selection, fixed defaults)."""
  x_train, x_test = _check_x("x_train", x_train), _check_x("x_test", x_test)
  if x_val is not None:
    x_val = _check_x("x_val", x_val)
    if y_val is None:
      raise ValueError("x_val given without y_val")
  return x_train, x_val, x_test


def _scaled(x_train, *others):
  scaler = StandardScaler().fit(x_train)
  return [scaler.transform(x_train)] + [None if x is None else scaler.transform(x) for x in others]


def _logistic_probs(c: float, cfg: LinearConfig, x_train, y_train, x_eval, num_classes: int):
  model = LogisticRegression(C=c, max_iter=cfg.max_iter)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)
    model.fit(x_train, y_train)
  probs = np.zeros((len(x_eval), num_classes))
  probs[:, model.classes_] = model.predict_proba(x_eval)  # a class absent from train gets 0
  return probs


def fit_predict_logistic(
  x_train, y_train, x_val, y_val, x_test, num_classes: int, cfg: LinearConfig = LinearConfig()
) -> np.ndarray:
  """(N_test, num_classes) class probabilities of multinomial L2 logistic regression.

  x_train, x_val, x_test: (N, F) finite features (x_val None = no selection, fixed defaults);
  y_train, y_val: (N,) int class codes.
  """
  x_train, x_val, x_test = _checked(x_train, x_val, y_val, x_test)
  y_train = np.asarray(y_train, np.int64)
  if np.any((y_train < 0) | (y_train >= num_classes)):
    raise ValueError(
      f"y_train must hold class codes in [0, {num_classes}); got {np.unique(y_train)} (drop unlabelled patients first)"
    )
  x_train, x_val, x_test = _scaled(x_train, x_val, x_test)
  c = cfg.default_c
  if x_val is not None and len(cfg.c_grid) > 1:
    y_val = np.asarray(y_val, np.int64)
    losses = [
      log_loss(
        y_val,
        np.clip(_logistic_probs(c_, cfg, x_train, y_train, x_val, num_classes), 1e-12, 1.0),
        labels=np.arange(num_classes),
      )
      for c_ in cfg.c_grid
    ]
    c = cfg.c_grid[int(np.argmin(losses))]
  return _logistic_probs(c, cfg, x_train, y_train, x_test, num_classes)


def _survival_arrays(y) -> tuple[np.ndarray, np.ndarray]:
  time, event = y
  time, event = np.asarray(time, np.float64), np.asarray(event)
  if time.shape != event.shape or time.ndim != 1:
    raise ValueError(f"survival y must be (time (N,), event (N,)); got {time.shape}, {event.shape}")
  if not np.all(np.isin(event, (0, 1))):
    raise ValueError(f"event flags must be 0/1, got {np.unique(event)}")
  return time, event.astype(bool)


def c_index(time, event, risk) -> float:
  """Harrell's C-index (higher risk = shorter survival)."""
  return float(
    concordance_index_censored(np.asarray(event, bool), np.asarray(time, np.float64), np.asarray(risk, np.float64))[0]
  )


def fit_predict_cox(x_train, y_train, x_val, y_val, x_test, cfg: LinearConfig = LinearConfig()) -> np.ndarray:
  """(N_test,) risk scores (linear predictor; higher = shorter survival) of an elastic-net Cox
  model (Coxnet). x_*: (N, F) finite features (x_val None = fixed defaults); y_*: the pair
  (time (N,), event (N,))."""
  x_train, x_val, x_test = _checked(x_train, x_val, y_val, x_test)
  time, event = _survival_arrays(y_train)
  x_train, x_val, x_test = _scaled(x_train, x_val, x_test)
  grid = cfg.alpha_grid if x_val is not None else (cfg.default_alpha,)
  model, alphas = _fit_coxnet_path(x_train, Surv.from_arrays(event, time), grid, cfg)
  alpha = alphas[0]
  if x_val is not None and len(alphas) > 1:
    vt, ve = _survival_arrays(y_val)
    if ve.any():  # without a validation event every alpha ties
      scores = [c_index(vt, ve, model.predict(x_val, alpha=a)) for a in alphas]
      alpha = alphas[int(np.argmax(scores))]
  return model.predict(x_test, alpha=alpha)


def _fit_coxnet_path(x, y, grid: Sequence[float], cfg: LinearConfig):
  """Coxnet over `grid` (decreasing). When the weakest penalties diverge (Coxnet raises
  ArithmeticError when p > n and alpha is small) they are dropped from the path."""
  alphas = sorted(set(grid), reverse=True)
  while True:
    model = CoxnetSurvivalAnalysis(alphas=alphas, l1_ratio=cfg.l1_ratio, max_iter=100_000)
    try:
      with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(x, y), alphas
    except ArithmeticError as e:
      if len(alphas) == 1:
        raise ValueError(
          f"Coxnet diverged at alpha={alphas[0]} (l1_ratio={cfg.l1_ratio}) on "
          f"{x.shape[0]} patients x {x.shape[1]} features: {e}"
        ) from e
      alphas = alphas[:-1]
