"""Preprocessing fitted on the training split only, JSON round trip, survival bins."""

from __future__ import annotations

import numpy as np
import pytest

from smml_jax.data import labels as labels_lib
from smml_jax.data import normalise, spec as spec_lib, splits as splits_lib
from smml_jax.data.errors import CohortError

SMALL = {
  "layout": "synthetic",
  "n_patients": 60,
  "grid_side": 2,
  "feature_dim": 4,
  "n_genes_tumour": 4,
  "n_genes_micro": 3,
  "seed": 9,
}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
  return spec_lib.load_cohort(SMALL, tmp_path_factory.mktemp("records"))


def _train_first_slides(cohort, train):
  pid = cohort.slides["patient_id"].to_numpy()[train]
  _, first = np.unique(pid, return_index=True)
  return np.sort(train[first])


def test_gene_stats_come_from_training_patients_only(cohort):
  parts = splits_lib.make_splits(cohort, "original", seed=0)
  pre = normalise.fit_preprocessor(cohort, parts["train"])
  idx = _train_first_slides(cohort, parts["train"])
  x = np.log1p(cohort.genes("tumour", idx).astype(np.float64))
  np.testing.assert_allclose(pre.mean["tumour"], x.mean(0))
  np.testing.assert_allclose(pre.std["tumour"], x.std(0))
  z = pre.transform_genes("tumour", cohort.genes("tumour", idx))
  np.testing.assert_allclose(z.mean(0), 0, atol=1e-5)
  np.testing.assert_allclose(z.std(0), 1, atol=1e-4)
  # Changing held-out genes leaves the fitted statistics untouched.
  saved = cohort.raw_genes["tumour"].copy()
  try:
    cohort.raw_genes["tumour"][parts["test"]] *= 100.0
    again = normalise.fit_preprocessor(cohort, parts["train"])
  finally:
    cohort.raw_genes["tumour"][:] = saved
  assert again == pre


def test_survival_cuts_from_training_split(cohort):
  parts = splits_lib.make_splits(cohort, "original", seed=0)
  pre = normalise.fit_preprocessor(cohort, parts["train"])
  idx = _train_first_slides(cohort, parts["train"])
  t, e = cohort.slides["surv_time"].to_numpy()[idx], cohort.slides["event"].to_numpy()[idx]
  np.testing.assert_allclose(pre.surv_cuts, np.quantile(t[e == 1], [0.25, 0.5, 0.75]))
  fixed = normalise.fit_preprocessor(cohort, parts["train"], survival_cuts="original")
  assert fixed.surv_cuts == labels_lib.ORIGINAL_SURVIVAL_CUTS_DAYS
  bins = fixed.survival_bins(np.array([0.0, 233.5, 600.0, 5000.0, -1.0]))
  np.testing.assert_array_equal(bins, [0, 1, 2, 3, -1])
  with pytest.raises(CohortError, match="must increase"):
    normalise.fit_preprocessor(cohort, parts["train"], survival_cuts=[5.0, 1.0, 9.0])


def test_preprocessor_json_round_trip_and_batch_application(cohort):
  parts = splits_lib.make_splits(cohort, "original", seed=0)
  pre = normalise.fit_preprocessor(cohort, parts["train"], clip=3.0)
  back = normalise.Preprocessor.from_json(pre.to_json())
  assert back == pre
  batch = {
    "genes_tumour": cohort.genes("tumour", parts["test"]),
    "genes_micro": cohort.genes("micro", parts["test"]),
    "surv_time": cohort.slides["surv_time"].to_numpy()[parts["test"]],
  }
  out = back(batch)
  assert np.abs(out["genes_micro"]).max() <= 3.0
  np.testing.assert_array_equal(out["surv_bin"], pre.survival_bins(batch["surv_time"]))
  raw = normalise.fit_preprocessor(cohort, parts["train"], gene_transform="raw")
  np.testing.assert_array_equal(raw(batch)["genes_tumour"], batch["genes_tumour"])


def test_log1p_rejects_negative_expression_and_bad_options(cohort):
  parts = splits_lib.make_splits(cohort, "original", seed=0)
  saved = cohort.raw_genes["micro"].copy()
  try:
    cohort.raw_genes["micro"][parts["train"][0], 2] = -1.5
    with pytest.raises(CohortError, match="SYN_M002.*negative.*zscore"):
      normalise.fit_preprocessor(cohort, parts["train"])
    z = normalise.fit_preprocessor(cohort, parts["train"], gene_transform="zscore")
    assert z.gene_transform == "zscore"
  finally:
    cohort.raw_genes["micro"][:] = saved
  with pytest.raises(CohortError, match="gene_transform"):
    normalise.fit_preprocessor(cohort, parts["train"], gene_transform="quantile")
  with pytest.raises(CohortError, match="empty training split"):
    normalise.fit_preprocessor(cohort, parts["train"][:0])
