"""Patient-level splits: no patient in two parts under any scheme."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from smml_jax.data import spec as spec_lib
from smml_jax.data import splits as splits_lib
from smml_jax.data.errors import CohortError

SMALL = {
  "layout": "synthetic",
  "n_patients": 50,
  "grid_side": 2,
  "feature_dim": 4,
  "n_genes_tumour": 3,
  "n_genes_micro": 3,
  "seed": 4,
  "second_slide_fraction": 0.5,
}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
  return spec_lib.load_cohort(SMALL, tmp_path_factory.mktemp("records"))


def _patient_sets(cohort, parts):
  pid = cohort.slides["patient_id"].to_numpy()
  return {k: set(pid[v]) for k, v in parts.items()}


def _assert_disjoint_and_whole(cohort, parts, covers_all=True):
  sets = _patient_sets(cohort, parts)
  for a, b in itertools.combinations(sets, 2):
    assert not sets[a] & sets[b], (a, b)
  splits_lib.assert_patient_disjoint(cohort, parts)
  # Every slide of a chosen patient comes along (split by patient, not by slide).
  for part, idx in parts.items():
    assert set(idx) == set(np.flatnonzero(cohort.slides["patient_id"].isin(sets[part])))
  if covers_all:
    assert set().union(*sets.values()) == set(cohort.slides["patient_id"])


def test_original_scheme_matches_the_original_shuffle(cohort):
  parts = splits_lib.make_splits(cohort, "original", seed=7)
  _assert_disjoint_and_whole(cohort, parts)
  # The original: np.random.seed(seed); np.unique; np.random.shuffle; 80 / 10 / 10 with the
  # LAST tenth as validation and the one before it as test.
  np.random.seed(7)
  ids = np.unique(list(cohort.slides["patient_id"].to_numpy()))
  np.random.shuffle(ids)
  n = len(ids)
  sets = _patient_sets(cohort, parts)
  assert sets["train"] == set(ids[: int(n * 0.8)])
  assert sets["test"] == set(ids[int(n * 0.8) : int(n * 0.9)])
  assert sets["val"] == set(ids[int(n * 0.9) :])
  other = splits_lib.make_splits(cohort, "original", seed=8)
  assert other["train"].tolist() != parts["train"].tolist()


def test_kfold_scheme_partitions_patients(cohort):
  tests = []
  for fold in range(5):
    parts = splits_lib.make_splits(cohort, "kfold", seed=1, fold=fold, n_folds=5)
    _assert_disjoint_and_whole(cohort, parts)
    assert len(parts["val"]) > 0
    tests.append(_patient_sets(cohort, parts)["test"])
  assert set().union(*tests) == set(cohort.slides["patient_id"])
  assert sum(map(len, tests)) == cohort.slides["patient_id"].nunique()
  with pytest.raises(CohortError, match="fold must be"):
    splits_lib.make_splits(cohort, "kfold", fold=5, n_folds=5)


def test_split_file_scheme(cohort, tmp_path):
  ids = sorted(cohort.slides["patient_id"].unique())
  table = pd.DataFrame({"train": ids[:30], "val": ids[30:40] + [None] * 20, "test": ids[40:] + [None] * 20})
  table.to_csv(tmp_path / "splits_0.csv")
  parts = splits_lib.make_splits(cohort, "file", fold=0, split_file=tmp_path / "splits_{fold}.csv")
  _assert_disjoint_and_whole(cohort, parts)
  assert _patient_sets(cohort, parts)["test"] == set(ids[40:])
  # MCAT files have no test column: its val is the held-out fold, val is carved from train.
  table.drop(columns="test").to_csv(tmp_path / "mcat.csv")
  parts = splits_lib.make_splits(cohort, "file", split_file=tmp_path / "mcat.csv", seed=3)
  _assert_disjoint_and_whole(cohort, parts, covers_all=False)
  assert _patient_sets(cohort, parts)["test"] == set(ids[30:40])
  assert len(parts["val"]) > 0


def test_split_file_with_a_leak_is_an_error(cohort, tmp_path):
  ids = sorted(cohort.slides["patient_id"].unique())
  pd.DataFrame({"train": ids[:10], "val": ids[9:19]}).to_csv(tmp_path / "leak.csv")
  with pytest.raises(CohortError, match=f"{ids[9]}.*both 'train' and 'val'"):
    splits_lib.make_splits(cohort, "file", split_file=tmp_path / "leak.csv")
  with pytest.raises(CohortError, match="does not exist"):
    splits_lib.make_splits(cohort, "file", split_file=tmp_path / "none.csv")
  with pytest.raises(CohortError, match="unknown split scheme"):
    splits_lib.make_splits(cohort, "random")


def test_assert_patient_disjoint_catches_slide_level_splits(cohort):
  pid = cohort.slides["patient_id"]
  two = pid[pid.duplicated(keep=False)].index.to_numpy()
  with pytest.raises(CohortError, match="in both"):
    splits_lib.assert_patient_disjoint(cohort, {"train": two[:1], "test": two[1:2]})
