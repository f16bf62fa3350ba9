"""The CLAM / MCAT layout, on the real PORPOISE TCGA-GBMLGG table (../shared/data)."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest

from conftest import shared_data_dir
from smml_jax.data import spec as spec_lib
from smml_jax.data import splits as splits_lib
from smml_jax.data.clam_layout import DAYS_PER_MONTH, slide_file_stem
from smml_jax.data.errors import CohortError

D = 8
STEP = 256  # patch size in slide pixels
TUMOUR_FAMILIES = ["Tumor Suppressor Genes", "Oncogenes"]
MICRO_FAMILIES = ["Cytokines and Growth Factors"]


def _paths():
  root = shared_data_dir() / "mahmoodlab-PORPOISE"
  csv = root / "datasets_csv_mutsig/tcga_gbmlgg_all_clean.csv.zip"
  sig = root / "datasets_csv/signatures.csv"
  split = root / "splits/5foldcv/tcga_gbmlgg/splits_{fold}.csv"
  for p in (csv, sig, split.parent / "splits_0.csv"):
    if not p.is_file():
      pytest.fail(f"shared data file {p} is missing", pytrace=False)
  return csv, sig, split


@pytest.fixture(scope="module")
def clam(tmp_path_factory):
  csv, sig, split = _paths()
  table = pd.read_csv(csv)
  folds = pd.read_csv(str(split).format(fold=0))
  train_p, val_p = folds["train"].dropna().tolist(), folds["val"].dropna().tolist()
  # A handful of slides: some patients with several slides, from both parts of fold 0.
  multi = table["case_id"].value_counts()
  multi = [p for p in multi[multi >= 2].index if p in train_p][:2]
  patients = multi + [p for p in train_p if p not in multi][:3] + val_p[:3]
  chosen = table[table["case_id"].isin(patients)].groupby("case_id").head(2)
  rng = np.random.default_rng(0)
  feat_dir = tmp_path_factory.mktemp("clam_feats")
  truth = {}
  for slide in chosen["slide_id"]:
    w, h = int(rng.integers(2, 7)), int(rng.integers(2, 7))
    grid = np.stack(np.meshgrid(np.arange(w), np.arange(h)), -1).reshape(-1, 2)
    keep = grid[rng.random(len(grid)) < 0.8]
    keep = keep if len(keep) else grid[:1]
    coords = (keep * STEP + 1000).astype(np.int64)
    feats = rng.standard_normal((len(keep), D)).astype(np.float32)
    with h5py.File(feat_dir / f"{slide_file_stem(slide)}.h5", "w") as f:
      f["features"], f["coords"] = feats, coords
    truth[slide] = (feats, coords)
  spec = {
    "layout": "clam",
    "csv": str(csv),
    "features": str(feat_dir),
    "grid_side": 6,
    "feature_dim": D,
    "patch_dtype": "float32",
    "slides": list(chosen["slide_id"]),
    "signature": {"path": str(sig), "families": {"tumour": TUMOUR_FAMILIES, "micro": MICRO_FAMILIES}},
    "labels": {
      "idh": "IDH1_mut",
      "cdkn2a": "CDKN2A_cnv",
      "histology": {"column": "oncotree_code", "map": "oncotree"},
      "grade": {"column": "oncotree_code", "map": "oncotree"},
    },
  }
  data_dir = tmp_path_factory.mktemp("clam_records")
  return {
    "spec": spec,
    "data_dir": data_dir,
    "table": table,
    "chosen": chosen,
    "truth": truth,
    "split": split,
    "sig": pd.read_csv(sig),
    "cohort": spec_lib.load_cohort(spec, data_dir),
  }


def test_clam_genes_follow_signature_order_and_csv_values(clam):
  cohort, chosen, sig = clam["cohort"], clam["chosen"], clam["sig"]
  for key, fams in (("tumour", TUMOUR_FAMILIES), ("micro", MICRO_FAMILIES)):
    order = list(dict.fromkeys(g for f in fams for g in sig[f].dropna()))
    expected = [f"{g}_rnaseq" for g in order if f"{g}_rnaseq" in chosen.columns]
    assert cohort.gene_names[key] == expected
    assert len(cohort.info["missing_genes"][key]) == len(order) - len(expected)
    np.testing.assert_allclose(cohort.genes(key), chosen[expected].to_numpy(np.float32))
    np.testing.assert_allclose(cohort.source[0][f"genes_{key}"], chosen[expected].iloc[0].to_numpy(np.float32))
  assert cohort.gene_transform == "zscore"


def test_clam_survival_and_labels(clam):
  s, chosen = clam["cohort"].slides, clam["chosen"]
  assert list(s["slide_id"]) == list(chosen["slide_id"])
  np.testing.assert_allclose(s["surv_time"], chosen["survival_months"] * DAYS_PER_MONTH, rtol=1e-5)
  np.testing.assert_array_equal(s["event"], 1 - chosen["censorship"])
  np.testing.assert_array_equal(s["idh"], chosen["IDH1_mut"])
  np.testing.assert_array_equal(s["cdkn2a"], (chosen["CDKN2A_cnv"] <= -1).astype(int))
  gbm = (chosen["oncotree_code"] == "GBM").to_numpy()
  np.testing.assert_array_equal(s["histology"].to_numpy() == 3, gbm)
  np.testing.assert_array_equal(s["grade"].to_numpy() == 2, gbm)
  assert (s["codel"] == -1).all()  # no 1p/19q column in this table


def test_clam_sample_layout_tiles_small_bags(clam):
  cohort, truth = clam["cohort"], clam["truth"]
  for i, slide in enumerate(cohort.slides["slide_id"]):
    feats, coords = truth[slide]
    n = len(feats)
    idx = (
      np.concatenate([np.tile(np.arange(n), 36 // n), np.arange(36 % n)])
      if n <= 36
      else np.around(np.arange(36) * (n / 36)).astype(int)
    )
    ex = cohort.source[i]
    np.testing.assert_allclose(ex["patches"], feats[idx])
    np.testing.assert_allclose(ex["coords"], coords[idx])


def test_clam_coords_layout_keeps_neighbours(clam, tmp_path):
  spec = dict(clam["spec"], grid_layout="coords")
  cohort = spec_lib.load_cohort(spec, tmp_path)
  assert cohort.path != clam["cohort"].path  # a changed spec is a new build
  for i, slide in enumerate(cohort.slides["slide_id"]):
    feats, coords = clam["truth"][slide]
    ex = cohort.source[i]
    cells = ex["patches"].reshape(6, 6, D)
    mask = ex["tissue_mask"].reshape(6, 6)
    assert mask.sum() == len(feats)  # every lattice fits a 6 x 6 grid: one patch per cell
    lattice = (coords - coords.min(0)) // STEP
    offset = (6 - (lattice.max(0) + 1)) // 2
    for f, (x, y) in zip(feats, lattice + offset):
      np.testing.assert_allclose(cells[y, x], f)
    assert np.all(ex["patches"][~ex["tissue_mask"]] == 0)


def test_clam_split_file_is_patient_disjoint(clam):
  cohort = clam["cohort"]
  parts = splits_lib.make_splits(cohort, "file", seed=0, fold=0, split_file=str(clam["split"]), val_fraction=0.0)
  splits_lib.assert_patient_disjoint(cohort, parts)
  folds = pd.read_csv(str(clam["split"]).format(fold=0))
  pid = cohort.slides["patient_id"].to_numpy()
  assert set(pid[parts["test"]]) == set(pid) & set(folds["val"].dropna())
  assert set(pid[parts["train"]]) == set(pid) & set(folds["train"].dropna())


def test_clam_nan_gene_value_is_an_error(clam, tmp_path):
  table = clam["chosen"].copy()
  col = clam["cohort"].gene_names["micro"][0]
  table.loc[table.index[1], col] = np.nan
  csv = tmp_path / "bad.csv"
  table.to_csv(csv, index=False)
  with pytest.raises(CohortError, match=f"data row 1.*{col}.*finite"):
    spec_lib.load_cohort(dict(clam["spec"], csv=str(csv)), tmp_path / "r")


def test_clam_missing_required_column(clam, tmp_path):
  csv = tmp_path / "bad.csv"
  clam["chosen"].drop(columns=["censorship"]).to_csv(csv, index=False)
  with pytest.raises(CohortError, match="missing columns.*censorship"):
    spec_lib.load_cohort(dict(clam["spec"], csv=str(csv)), tmp_path / "r")


def test_clam_coords_shape_mismatch(clam, tmp_path):
  slide = clam["chosen"]["slide_id"].iloc[0]
  feats, coords = clam["truth"][slide]
  feat_dir = tmp_path / "feats"
  feat_dir.mkdir()
  for s, (f, c) in clam["truth"].items():
    with h5py.File(feat_dir / f"{slide_file_stem(s)}.h5", "w") as h:
      h["features"], h["coords"] = f, (c[:-1] if s == slide and len(c) > 1 else c[:, :1])
  with pytest.raises(CohortError, match="'coords' has shape"):
    spec_lib.load_cohort(dict(clam["spec"], features=str(feat_dir)), tmp_path / "r")
