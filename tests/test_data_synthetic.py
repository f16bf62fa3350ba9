"""The embedded synthetic glioma cohort: labels by WHO 2021, spatial immune blobs, and a grading
signal that needs both modalities."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from smml_jax.data import labels as labels_lib
from smml_jax.data import synthetic

SMALL = synthetic.SyntheticConfig(n_patients=60, grid_side=8, feature_dim=16, n_genes_tumour=8, n_genes_micro=6, seed=5)


def test_synthetic_is_deterministic_per_seed():
  a, b = synthetic.generate(SMALL), synthetic.generate(SMALL)
  np.testing.assert_array_equal(a.genes_tumour, b.genes_tumour)
  np.testing.assert_array_equal(a.slide(3)["patches"], b.slide(3)["patches"])
  c = synthetic.generate(synthetic.SyntheticConfig(**{**SMALL.__dict__, "seed": 6}))
  assert not np.array_equal(a.genes_tumour, c.genes_tumour)


def test_synthetic_labels_follow_who2021_and_patients_share_values():
  c = synthetic.generate(SMALL)
  s = c.slides
  np.testing.assert_array_equal(
    s["diagnosis"], labels_lib.who2021_diagnosis(s["idh"], s["codel"], s["cdkn2a"], s["grade"])
  )
  np.testing.assert_array_equal(s["subtype"], labels_lib.who2021_subtype(s["idh"], s["codel"]))
  assert s["slide_id"].is_unique
  per_patient = s.groupby("patient_id")
  assert (per_patient.size() == 2).any() and (per_patient.size() == 1).any()
  assert (per_patient[["grade", "diagnosis", "surv_time", "event"]].nunique() == 1).all().all()
  for pid, rows in per_patient.groups.items():  # genes are per patient
    assert np.ptp(c.genes_tumour[list(rows)], axis=0).max() == 0
  assert 0 < s["event"].mean() < 1  # some censoring
  assert (s["surv_time"] > 0).all()
  assert (c.genes_tumour > 0).all() and (c.genes_micro > 0).all()


def test_synthetic_immune_regions_are_spatially_coherent_and_track_infiltration():
  c = synthetic.generate(SMALL)
  side = SMALL.grid_side
  same, fractions = [], []
  for i in range(len(c.slides)):
    m = c.slide(i)["immune_mask"].reshape(side, side)
    # P(right neighbour immune | immune) far above the immune fraction: blobs, not noise.
    both = (m[:, :-1] & m[:, 1:]).sum() + (m[:-1] & m[1:]).sum()
    same.append(both / max(1, m[:, :-1].sum() + m[:-1].sum()))
    fractions.append(m.mean())
  assert np.mean(same) > 2.0 * np.mean(fractions)
  assert np.corrcoef(fractions, c.latents["infiltration"])[0, 1] > 0.5
  s0 = c.slide(0)
  assert not (s0["immune_mask"] & s0["tumour_mask"]).any()


def _probe_auc(x, y, train, test):
  model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000))
  model.fit(x[train], y[train])
  return roc_auc_score(y[test], model.predict_proba(x[test]), multi_class="ovr")


def test_synthetic_grading_needs_both_modalities():
  """Linear probes for grade: genes only and mean-pooled patches only both lose to both."""
  c = synthetic.generate()  # the default cohort of experiments.run
  s = c.slides
  pooled = np.stack([c.slide(i)["patches"].mean(0) for i in range(len(s))])
  genes = np.log1p(np.concatenate([c.genes_tumour, c.genes_micro], 1))
  pi = c.latents["patient_index"]
  test_patients = np.random.default_rng(0).permutation(c.config.n_patients)[:120]
  test = np.isin(pi, test_patients)
  y = s["grade"].to_numpy()
  auc = {
    name: _probe_auc(x, y, ~test, test)
    for name, x in (("genes", genes), ("patches", pooled), ("both", np.concatenate([genes, pooled], 1)))
  }
  assert auc["both"] >= 0.8, auc
  assert auc["both"] > auc["genes"] + 0.05 and auc["both"] > auc["patches"] + 0.05, auc
