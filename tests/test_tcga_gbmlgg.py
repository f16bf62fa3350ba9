"""The real TCGA GBM-LGG cohort, its protocols and the classical reference, on the shared tables."""

from __future__ import annotations

import functools
import shutil

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from smml_jax.data import labels
from smml_jax.data import splits as protocols
from smml_jax.data import tcga_gbmlgg, tcga_gbmlgg_tables as tables
from smml_jax.data.tcga_gbmlgg import GBMLGGDataError, load_gbmlgg
from smml_jax.models import linear
from smml_jax.tasks import get_task
from conftest import shared_data_dir

pytestmark = pytest.mark.filterwarnings("ignore:Unknown extension is not supported")


@functools.cache
def _cohort(source: str, task: str) -> tcga_gbmlgg.GenomicCohort:
  return load_gbmlgg(shared_data_dir(), source, task)


def _pnas_raw() -> pd.DataFrame:
  root = shared_data_dir()
  feats = pd.read_csv(root / tables.PNAS_FEATURES)
  grade = pd.read_csv(root / tables.PNAS_GRADE)
  return feats.merge(grade, on="TCGA ID").set_index("TCGA ID")


def _porpoise_raw() -> pd.DataFrame:
  df = pd.read_csv(shared_data_dir() / tables.PORPOISE_TABLE)
  return df.drop_duplicates("case_id").set_index("case_id")


# --- cohort -----------------------------------------------------------------------------------


@pytest.mark.parametrize("source", tcga_gbmlgg.SOURCES)
def test_one_record_per_patient_of_the_source_table(source):
  cohort = _cohort(source, "grading")
  raw = _pnas_raw() if source == "pnas" else _porpoise_raw()
  assert cohort.num_patients == len(raw) == {"pnas": 769, "porpoise": 569}[source]
  assert len(set(cohort.case_ids)) == cohort.num_patients
  assert set(cohort.case_ids) == set(raw.index)
  assert cohort.x_tumour.dtype == cohort.x_micro.dtype == np.float32
  assert cohort.x_tumour.shape == (cohort.num_patients, len(cohort.tumour_features))
  assert cohort.x_micro.shape == (cohort.num_patients, len(cohort.micro_features))


def test_pnas_labels_match_the_raw_tables():
  cohort, raw = _cohort("pnas", "grading"), _pnas_raw().loc[_cohort("pnas", "grading").case_ids]
  want_grade = raw["Grade"].map({2.0: 0, 3.0: 1, 4.0: 2}).fillna(-1).to_numpy(np.int64)
  np.testing.assert_array_equal(cohort.grade, want_grade)
  text = raw["Molecular subtype"].map({"IDHwt": 0, "IDHmut-non-codel": 1, "IDHmut-codel": 2})
  np.testing.assert_array_equal(cohort.subtype, text.fillna(-1).to_numpy(np.int64))
  np.testing.assert_array_equal(cohort.event, 1 - raw["censored"].to_numpy())
  np.testing.assert_allclose(cohort.surv_time, raw["Time to last followup or death (months)"])


@pytest.mark.parametrize("source", tcga_gbmlgg.SOURCES)
def test_labels_follow_the_who2021_rules(source):
  c = _cohort(source, "grading")
  assert set(np.unique(c.grade)) <= {-1, 0, 1, 2} and np.sum(c.grade >= 0) > 0.9 * c.num_patients
  for g in range(3):
    assert np.sum(c.grade == g) > 0.1 * c.num_patients
  np.testing.assert_array_equal(c.subtype == 0, c.idh == 0)
  np.testing.assert_array_equal(c.subtype == 2, (c.idh == 1) & (c.codel == 1))
  np.testing.assert_array_equal(c.diagnosis == 0, c.subtype == 0)
  np.testing.assert_array_equal(c.diagnosis == 3, c.subtype == 2)
  astro = c.subtype == 1
  assert np.all(np.isin(c.diagnosis[astro], (-1, 1, 2)))
  assert np.all(c.diagnosis[astro & (c.grade == 2)] == 1)
  assert np.all(c.diagnosis[astro & (c.cdkn2a == 1)] == 1)
  assert np.all(c.diagnosis[astro & (c.cdkn2a == 0) & (c.grade < 2) & (c.grade >= 0)] == 2)
  for k in range(4):
    assert np.sum(c.diagnosis == k) >= 20
  assert set(np.unique(c.event)) == {0, 1} and np.all(c.surv_time >= 0)


def test_sources_agree_on_shared_patients():
  pnas, porp = _cohort("pnas", "grading"), _cohort("porpoise", "grading")
  shared = sorted(set(pnas.case_ids) & set(porp.case_ids))
  assert len(shared) > 400
  i, j = pnas.index_of(shared), porp.index_of(shared)
  known = (pnas.grade[i] >= 0) & (porp.grade[j] >= 0)
  assert known.sum() > 0.9 * len(shared)
  np.testing.assert_array_equal(pnas.grade[i][known], porp.grade[j][known])
  # PORPOISE months come from days / 30.44, rounded.
  np.testing.assert_allclose(porp.surv_time[j], pnas.surv_time[i], atol=0.5 * 30.44)
  # PORPOISE borrows IDH / 1p19q from the PNAS table; unknown outside it.
  np.testing.assert_array_equal(porp.subtype[j], pnas.subtype[i])
  outside = np.setdiff1d(np.arange(porp.num_patients), j)
  assert np.all(porp.subtype[outside] == -1)


# --- subspaces and feature exclusion ---------------------------------------------------------


@pytest.mark.parametrize("task", tcga_gbmlgg.TASKS)
@pytest.mark.parametrize("source", tcga_gbmlgg.SOURCES)
def test_label_defining_columns_are_not_inputs(source, task):
  c = _cohort(source, task)
  names = set(c.tumour_features) | set(c.micro_features)
  idh_codel = {"idh mutation", "codeletion", "IDH1_mut"}
  if task in ("subtype", "diagnosis"):
    assert not names & idh_codel
    assert set(c.excluded_features) & idh_codel
  else:
    assert c.excluded_features == () and names & idh_codel
  assert ({"CDKN2A", "CDKN2A_cnv"} & names == set()) == (task == "diagnosis")
  grading = _cohort(source, "grading")
  assert names == (set(grading.tumour_features) | set(grading.micro_features)) - set(c.excluded_features)


def test_pnas_has_tumour_features_only():
  c = _cohort("pnas", "grading")
  assert not c.has_micro and c.x_micro.shape == (769, 0)
  assert c.tumour_features[:2] == ("codeletion", "idh mutation")
  assert {"EGFR", "PTEN", "CDKN2A", "1q", "22q"} <= set(c.tumour_features)
  assert c.features.shape == (769, len(c.tumour_features))


def test_porpoise_subspaces_are_disjoint_and_knowledge_driven():
  root = shared_data_dir()
  c = _cohort("porpoise", "grading")
  tumour, micro = set(c.tumour_features), set(c.micro_features)
  assert c.has_micro and len(tumour) > 100 and len(micro) > 100 and not tumour & micro
  sig = pd.read_csv(root / tables.SIGNATURES)
  families = set(sig["Oncogenes"].dropna()) | set(sig["Tumor Suppressor Genes"].dropna())
  est = pd.read_excel(root / tables.ESTIMATE, sheet_name="gene", header=1)
  lm22 = pd.read_csv(root / tables.LM22, sep="\t")
  immune = set(est["Gene"]) | set(lm22["Gene symbol"])
  raw = _porpoise_raw()
  alterations = {col for col in raw.columns if col.endswith(("_cnv", "_mut"))}
  assert alterations <= tumour
  tumour_rna = {f[: -len("_rnaseq")] for f in tumour if f.endswith("_rnaseq")}
  assert tumour_rna and tumour_rna <= families and not tumour_rna & immune
  assert all(f.endswith("_rnaseq") for f in micro)
  micro_genes = {f[: -len("_rnaseq")] for f in micro}
  assert micro_genes <= immune
  rna_genes = {col[: -len("_rnaseq")] for col in raw.columns if col.endswith("_rnaseq")}
  assert micro_genes == immune & rna_genes  # every listed gene with RNA, overlaps included
  assert tumour_rna == (families - immune) & rna_genes
  np.testing.assert_allclose(c.x_micro[:, 0], raw.loc[c.case_ids, c.micro_features[0]], rtol=1e-6)


# --- normalisation ------------------------------------------------------------------------------


def test_normaliser_is_fitted_on_training_patients_only():
  c = _cohort("porpoise", "grading")
  split = protocols.mcat5_splits(c, shared_data_dir(), folds=[0])[0]
  norm = c.fit_normaliser(split["train"])
  changed = tcga_gbmlgg.GenomicCohort(
    **{**{f: getattr(c, f) for f in c.__dataclass_fields__}, "x_tumour": c.x_tumour.copy(), "x_micro": c.x_micro.copy()}
  )
  changed.x_tumour[split["test"]] = 1e6
  changed.x_micro[split["test"]] = -1e6
  other = changed.fit_normaliser(split["train"])
  for field in ("mean_tumour", "scale_tumour", "mean_micro", "scale_micro"):
    np.testing.assert_array_equal(getattr(norm, field), getattr(other, field))
  train = c.genes(split["train"], norm)
  assert np.abs(train["genes_micro"].mean(0)).max() < 1e-4
  test = c.genes(split["test"], norm)
  assert np.all(np.isfinite(test["genes_tumour"])) and np.all(np.isfinite(test["genes_micro"]))
  # Heavy RNA tails are clipped before scaling.
  assert np.abs(c.x_micro).max() > 100 and np.abs(train["genes_micro"]).max() < 25


def test_normaliser_imputes_missing_values_with_the_training_mean():
  c = _cohort("pnas", "grading")
  assert np.isnan(c.x_tumour).any()
  norm = c.fit_normaliser(np.arange(500))
  x = c.genes(np.arange(c.num_patients), norm)["genes_tumour"]
  assert np.all(np.isfinite(x))
  assert np.all(x[np.isnan(c.x_tumour)] == 0.0)


def test_survival_bins_use_training_event_times():
  c = _cohort("pnas", "survival")
  train = np.arange(400)
  bins = c.survival_bins(train)
  cuts = labels.fit_survival_cuts(c.surv_time[train], c.event[train])
  np.testing.assert_array_equal(bins, labels.assign_survival_bins(c.surv_time, cuts))
  assert set(np.unique(bins[train])) == {0, 1, 2, 3}


# --- protocols ----------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["grading", "survival"])
def test_pnas15_splits_are_disjoint_and_follow_the_file(task):
  c = _cohort("pnas", task)
  table = pd.read_csv(shared_data_dir() / tables.PNAS_SPLITS, index_col=0)
  splits = protocols.pnas15_splits(c, shared_data_dir(), splits=[0, 7, 14])
  usable = c.labelled()
  for k, s in zip([0, 7, 14], splits):
    train, val, test = s["train"], s["val"], s["test"]
    assert not (set(train) & set(val) or set(train) & set(test) or set(val) & set(test))
    column = table[f"Randomization - {k + 1}"]
    want_test = set(c.index_of(column.index[column == "Test"]))
    want_train = set(c.index_of(column.index[column == "Train"]))
    assert set(test) == {i for i in want_test if usable[i]}
    assert set(train) | set(val) == {i for i in want_train if usable[i]}
    assert abs(len(val) / (len(train) + len(val)) - 0.15) < 0.02
    y = c.label()
    for cls in np.unique(y[train]):
      assert np.sum(y[val] == cls) >= 1
  assert not np.array_equal(splits[0]["test"], splits[1]["test"])
  again = protocols.pnas15_splits(c, shared_data_dir(), splits=[0])[0]
  np.testing.assert_array_equal(again["val"], splits[0]["val"])


def test_pnas15_on_porpoise_keeps_shared_patients():
  c = _cohort("porpoise", "survival")
  split = protocols.pnas15_splits(c, shared_data_dir(), splits=[0])[0]
  covered = np.concatenate(list(split.values()))
  assert set(c.case_ids[covered]) <= set(_cohort("pnas", "survival").case_ids)
  assert len(np.unique(covered)) > 400


def test_mcat5_folds_partition_the_labelled_patients():
  c = _cohort("porpoise", "grading")
  folds = protocols.mcat5_splits(c, shared_data_dir())
  assert len(folds) == 5
  held = [f["test"] for f in folds]
  for f in folds:
    np.testing.assert_array_equal(f["val"], f["test"])
    assert not set(f["train"]) & set(f["test"])
    assert set(f["train"]) | set(f["test"]) == set(np.flatnonzero(c.labelled()))
  assert sum(len(h) for h in held) == len(set(np.concatenate(held))) == c.labelled().sum()
  assert not protocols.SELECTS_ON_VAL["mcat5"] and protocols.SELECTS_ON_VAL["pnas15"]


# --- errors -------------------------------------------------------------------------------------


def _copy_pnas(tmp_path):
  for rel in (tables.PNAS_FEATURES, tables.PNAS_GRADE, tables.PNAS_SPLITS):
    (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(shared_data_dir() / rel, tmp_path / rel)


def test_missing_file_and_column_are_named(tmp_path):
  with pytest.raises(GBMLGGDataError, match="all_dataset.csv"):
    load_gbmlgg(tmp_path, "pnas", "grading")
  _copy_pnas(tmp_path)
  with pytest.raises(GBMLGGDataError, match="tcga_gbmlgg_all_clean.csv.zip"):
    load_gbmlgg(tmp_path, "porpoise", "grading")
  path = tmp_path / tables.PNAS_FEATURES
  pd.read_csv(path).drop(columns=["codeletion"]).to_csv(path, index=False)
  with pytest.raises(GBMLGGDataError, match="codeletion"):
    load_gbmlgg(tmp_path, "pnas", "grading")
  with pytest.raises(ValueError, match="source"):
    load_gbmlgg(shared_data_dir(), "tcga", "grading")
  with pytest.raises(ValueError, match="protocol"):
    protocols.protocol_splits("cv10", _cohort("pnas", "grading"), shared_data_dir())


def test_bad_split_cell_is_reported(tmp_path):
  _copy_pnas(tmp_path)
  path = tmp_path / tables.PNAS_SPLITS
  table = pd.read_csv(path, index_col=0)
  table.iloc[3, 2] = "Tset"
  table.to_csv(path)
  with pytest.raises(GBMLGGDataError, match="Randomization - 3"):
    protocols.pnas15_splits(load_gbmlgg(tmp_path, "pnas", "grading"), tmp_path)


# --- classical reference ------------------------------------------------------------------------


def _xy(c, split, part, norm):
  return np.concatenate(list(c.genes(split[part], norm).values()), axis=1)


@pytest.mark.slow
def test_linear_grading_on_three_pnas15_splits_beats_chance():
  c = _cohort("pnas", "grading")
  y = c.label()
  aucs = []
  for s in protocols.pnas15_splits(c, shared_data_dir(), splits=range(3)):
    norm = c.fit_normaliser(s["train"])
    probs = get_task("grading").fit_predict_linear(
      _xy(c, s, "train", norm), y[s["train"]], _xy(c, s, "val", norm), y[s["val"]], _xy(c, s, "test", norm)
    )
    assert probs.shape == (len(s["test"]), 3)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    aucs.append(roc_auc_score(y[s["test"]], probs, multi_class="ovr", average="macro"))
  # Measured 0.78-0.86 over all 15 splits; chance is 0.5.
  assert min(aucs) > 0.7, aucs


@pytest.mark.slow
def test_linear_cox_on_three_pnas15_splits_ranks_survival():
  c = _cohort("pnas", "survival")
  scores = []
  for s in protocols.pnas15_splits(c, shared_data_dir(), splits=range(3)):
    norm = c.fit_normaliser(s["train"])
    yt = lambda part: (c.surv_time[s[part]], c.event[s[part]])
    risk = get_task("survival").fit_predict_linear(
      _xy(c, s, "train", norm), yt("train"), _xy(c, s, "val", norm), yt("val"), _xy(c, s, "test", norm)
    )
    assert risk.shape == (len(s["test"]),)
    scores.append(linear.c_index(*yt("test"), risk))
    # Higher risk = shorter survival: flipping the sign must flip the ranking.
    assert linear.c_index(*yt("test"), -risk) < 0.5
  assert min(scores) > 0.6, scores  # measured 0.72-0.80 over all 15 splits


def test_linear_without_validation_uses_fixed_defaults_and_keeps_all_classes():
  c = _cohort("porpoise", "grading")
  s = protocols.mcat5_splits(c, shared_data_dir(), folds=[0])[0]
  norm = c.fit_normaliser(s["train"])
  y = c.label()
  probs = get_task("grading").fit_predict_linear(
    _xy(c, s, "train", norm), y[s["train"]], None, None, _xy(c, s, "test", norm)
  )
  assert roc_auc_score(y[s["test"]], probs, multi_class="ovr") > 0.7
  no_g4 = s["train"][y[s["train"]] < 2]
  probs = get_task("grading").fit_predict_linear(
    c.genes(no_g4, norm)["genes_tumour"], y[no_g4], None, None, c.genes(s["test"], norm)["genes_tumour"]
  )
  assert probs.shape == (len(s["test"]), 3) and np.all(probs[:, 2] == 0)
  with pytest.raises(ValueError, match="NaN"):
    get_task("grading").fit_predict_linear(np.full((4, 2), np.nan), np.arange(4) % 3, None, None, np.zeros((1, 2)))
