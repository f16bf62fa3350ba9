"""Your own data: CLAM and TRIDENT folders read as they are, D from the files, expression
matrices joined on case id, gene lists from files (tiny generated cohorts)."""

from __future__ import annotations

import pathlib

import h5py
import numpy as np
import pandas as pd
import pytest

from smml_jax.data import expression as expression_lib
from smml_jax.data import spec as spec_lib
from smml_jax.data.errors import CohortError

D = 12
GENES = {"tumour": ["TP53", "EGFR", "PTEN"], "micro": ["CD4", "CD8A"]}
PS0 = 512  # TRIDENT's patch_size_level0: 256 px patches at 20x on a 40x slide


def _slides(n_patients: int = 4):
  rows = []
  for p in range(n_patients):
    for k in range(1 + p % 2):
      case = f"TCGA-AA-{p:04d}"
      rows.append(
        {
          "case_id": case,
          "slide_id": f"{case}-01Z-00-DX{k + 1}.svs",
          "survival_months": 3.0 + 5 * p,
          "censorship": p % 2,
        }
      )
  return pd.DataFrame(rows)


def _write_h5(path: pathlib.Path, rng, n: int = 9, dim: int = D, coords=None, attrs=None):
  path.parent.mkdir(parents=True, exist_ok=True)
  feats = rng.standard_normal((n, dim)).astype(np.float32)
  coords = (rng.integers(0, 6, (n, 2)) * PS0) if coords is None else coords
  with h5py.File(path, "w") as f:
    f["features"], f["coords"] = feats, np.asarray(coords, np.int64)
    for k, v in (attrs or {}).items():
      f["coords"].attrs[k] = v
  return feats


def _expression(table: pd.DataFrame, rng) -> pd.DataFrame:
  """cases x genes, the genes of both subspaces plus one the signature does not use."""
  cases = list(dict.fromkeys(table["case_id"]))
  genes = GENES["tumour"] + GENES["micro"] + ["GAPDH"]
  return pd.DataFrame(rng.normal(size=(len(cases), len(genes))), index=cases, columns=genes)


@pytest.fixture
def cohort_files(tmp_path):
  """clinical.csv, an expression matrix (cases x genes) and a TRIDENT job of two encoders."""
  rng = np.random.default_rng(0)
  table = _slides()
  table.to_csv(tmp_path / "clinical.csv", index=False)
  expr = _expression(table, rng)
  feats = {}
  for slide in table["slide_id"]:
    stem = slide[:-4]
    job = tmp_path / "job" / "20x_256px_0px_overlap"
    feats[slide] = _write_h5(
      job / "features_uni_v2" / f"{stem}.h5", rng, attrs={"patch_size": 256, "patch_size_level0": PS0, "overlap": 0}
    )
    _write_h5(job / "features_conch_v15" / f"{stem}.h5", rng, dim=7)
  return {"root": tmp_path, "table": table, "expr": expr, "feats": feats}


def _spec(files, **extra) -> dict:
  files["expr"].T.rename_axis("gene").to_csv(files["root"] / "expression.tsv", sep="\t")
  spec = {
    "layout": "trident",
    "root": str(files["root"]),
    "csv": "clinical.csv",
    "features": "job",
    "encoder": "uni_v2",
    "grid_side": 4,
    "patch_dtype": "float32",
    "expression": {"path": "expression.tsv"},
    "signature": GENES,
  }
  spec.update(extra)
  return {k: v for k, v in spec.items() if v is not None}


def test_trident_job_folder_reads_encoder_and_feature_dim_from_files(cohort_files, tmp_path):
  cohort = spec_lib.load_cohort(_spec(cohort_files), tmp_path / "records")
  assert cohort.feature_dim == D  # read from the files; no feature_dim in the spec
  assert list(cohort.slides["slide_id"]) == list(cohort_files["table"]["slide_id"])
  for i, slide in enumerate(cohort.slides["slide_id"]):
    feats = cohort_files["feats"][slide]
    idx = np.concatenate([np.tile(np.arange(9), 16 // 9), np.arange(16 % 9)])
    np.testing.assert_allclose(cohort.source[i]["patches"], feats[idx])
  other = spec_lib.load_cohort(_spec(cohort_files, encoder="conch_v15"), tmp_path / "r2")
  assert other.feature_dim == 7


def test_trident_features_folder_given_directly(cohort_files, tmp_path):
  folder = "job/20x_256px_0px_overlap/features_uni_v2"
  cohort = spec_lib.load_cohort(_spec(cohort_files, features=folder, encoder=None), tmp_path / "records")
  assert cohort.feature_dim == D


def test_trident_several_encoders_need_the_encoder_field(cohort_files, tmp_path):
  with pytest.raises(
    CohortError,
    match=r"2 features_<encoder> folders.*conch_v15.*uni_v2.*"
    r"`encoder`",
  ):
    spec_lib.load_cohort(_spec(cohort_files, encoder=None), tmp_path / "records")
  with pytest.raises(
    CohortError,
    match=r"no features_<encoder> folder 'uni_v3'.*did you mean "
    r"'uni_v2'",
  ):
    spec_lib.load_cohort(_spec(cohort_files, encoder="uni_v3"), tmp_path / "records")
  assert not (tmp_path / "records").exists()


def test_inconsistent_feature_dims_name_the_file(cohort_files, tmp_path):
  slide = cohort_files["table"]["slide_id"].iloc[2][:-4]
  bad = cohort_files["root"] / "job/20x_256px_0px_overlap/features_uni_v2" / f"{slide}.h5"
  _write_h5(bad, np.random.default_rng(1), dim=D + 1)
  with pytest.raises(CohortError, match=rf"{bad}.*shape \(9, {D + 1}\), expected \(N, {D}\).*has D = {D}"):
    spec_lib.load_cohort(_spec(cohort_files), tmp_path / "records")


def test_stated_feature_dim_must_match_the_files(cohort_files, tmp_path):
  with pytest.raises(CohortError, match=r"expected \(N, 1024\) since the spec's feature_dim is 1024"):
    spec_lib.load_cohort(_spec(cohort_files, feature_dim=1024), tmp_path / "records")


def test_trident_patch_size_places_sparse_patches_on_their_lattice(tmp_path):
  """Patches two strides apart stay two cells apart: the stride comes from patch_size_level0,
  not from the smallest gap between positions (which would close the gaps)."""
  rng = np.random.default_rng(0)
  table = _slides(1)
  table.to_csv(tmp_path / "clinical.csv", index=False)
  coords = np.array([[0, 0], [2, 0], [0, 2], [2, 2]]) * PS0 + 4096
  folder = tmp_path / "feats"
  stem = table["slide_id"].iloc[0][:-4]
  feats = _write_h5(
    folder / "features_uni_v2" / f"{stem}.h5",
    rng,
    n=4,
    coords=coords,
    attrs={"patch_size": 256, "patch_size_level0": PS0, "overlap": 0},
  )
  files = {"root": tmp_path, "expr": _expression(table, rng)}
  spec = _spec(files, features="feats/features_uni_v2", encoder=None, grid_layout="coords")
  ex = spec_lib.load_cohort(spec, tmp_path / "records").source[0]
  cells = ex["patches"].reshape(4, 4, D)
  assert ex["tissue_mask"].sum() == 4
  for f, (x, y) in zip(feats, coords // PS0 - 8):  # extent 3 on a 4 grid: offset 0
    np.testing.assert_allclose(cells[y, x], f)
  # Overlap: 256 px patches overlapping by 128 px sit patch_size_level0 / 2 apart.
  with h5py.File(folder / "features_uni_v2" / f"{stem}.h5", "a") as f:
    f["coords"].attrs["overlap"] = 128
  ex = spec_lib.load_cohort(spec, tmp_path / "r2").source[0]
  assert ex["tissue_mask"].reshape(4, 4)[[0, 0, 3, 3], [0, 3, 0, 3]].all()  # 5 x 5 lattice


def test_clam_job_folder_with_h5_files(tmp_path):
  rng = np.random.default_rng(0)
  table = _slides()
  table.to_csv(tmp_path / "clinical.csv", index=False)
  for slide in table["slide_id"]:
    _write_h5(tmp_path / "clam_out" / "h5_files" / f"{slide[:-4]}.h5", rng)
  spec = _spec({"root": tmp_path, "expr": _expression(table, rng)}, layout="clam", features="clam_out", encoder=None)
  assert spec_lib.load_cohort(spec, tmp_path / "records").feature_dim == D


@pytest.mark.parametrize("fmt", ["genes_tsv", "cases_csv", "genes_parquet"])
def test_expression_matrix_in_either_orientation_joins_on_case(cohort_files, tmp_path, fmt):
  expr, root = cohort_files["expr"], cohort_files["root"]
  if fmt == "cases_csv":
    expr.rename_axis("case").to_csv(root / "m.csv")
    path = "m.csv"
  elif fmt == "genes_parquet":
    expr.T.rename_axis("gene").to_parquet(root / "m.parquet")
    path = "m.parquet"
  else:
    expr.T.rename_axis("gene").to_csv(root / "m.tsv", sep="\t")
    path = "m.tsv"
  spec = _spec(cohort_files)
  spec["expression"] = {"path": path}
  cohort = spec_lib.load_cohort(spec, tmp_path / "records")
  cases = cohort.slides["patient_id"]
  for key in ("tumour", "micro"):
    assert cohort.gene_names[key] == [f"{g}_rnaseq" for g in GENES[key]]
    np.testing.assert_allclose(cohort.genes(key), expr.loc[cases, GENES[key]].to_numpy(), rtol=1e-6)


def test_missing_cases_are_listed(cohort_files, tmp_path):
  expr = cohort_files["expr"]
  dropped = list(expr.index[[0, 2]])
  spec = _spec(dict(cohort_files, expr=expr.drop(index=dropped)))
  values, missing = expression_lib.join_expression(
    expression_lib.read_expression_matrix(cohort_files["root"] / "expression.tsv", cohort_files["table"]["case_id"]),
    cohort_files["table"]["case_id"],
    GENES["tumour"],
  )
  assert missing == sorted(dropped)
  rows = cohort_files["table"]["case_id"].isin(dropped).to_numpy()
  assert np.isnan(values[rows]).all() and np.isfinite(values[~rows]).all()
  with pytest.raises(CohortError, match=r"expression.tsv.*2 case\(s\).*" + ".*".join(dropped)):
    spec_lib.load_cohort(spec, tmp_path / "records")


def test_ambiguous_orientation_asks_for_it(cohort_files, tmp_path):
  root = cohort_files["root"]
  pd.DataFrame({"x": ["a", "b"], "y": [1.0, 2.0]}).to_csv(root / "m.csv", index=False)
  spec = _spec(cohort_files)
  spec["expression"] = {"path": "m.csv"}
  with pytest.raises(
    CohortError,
    match=r"m.csv.*neither the header nor the first column.*"
    r"expression.orientation",
  ):
    spec_lib.load_cohort(spec, tmp_path / "records")


def test_gene_lists_from_files(cohort_files, tmp_path):
  root = cohort_files["root"]
  (root / "tumour.txt").write_text("# tumour genes\nTP53\nEGFR\n\nPTEN  # a comment\n")
  (root / "micro.txt").write_text("CD4\nCD8A\n")
  spec = _spec(cohort_files, signature={"tumour": "tumour.txt", "micro": "micro.txt"})
  cohort = spec_lib.load_cohort(spec, tmp_path / "records")
  assert cohort.gene_names["tumour"] == [f"{g}_rnaseq" for g in GENES["tumour"]]
  (root / "micro.txt").write_text("CD4,CD8A\n")
  with pytest.raises(CohortError, match=r"micro.txt: 'CD4,CD8A' is not one symbol"):
    spec_lib.load_cohort(spec, tmp_path / "r2")


@pytest.mark.parametrize(
  "edit,needle",
  [
    ({"expression": {"path": "e.tsv", "orientaton": "auto"}}, "did you mean 'orientation'"),
    ({"expression": {"path": "e.tsv", "orientation": "genes"}}, "'genes_by_samples'"),
    ({"expression": {"path": "e.tsv"}, "omics": ["rnaseq"]}, "give one of them"),
    ({"encodr": "uni_v2"}, "did you mean 'encoder'"),
    ({"signature": {"tumour": "t.txt", "micro": 3}}, "gene-list file"),
  ],
)
def test_new_fields_are_validated(tmp_path, edit, needle):
  spec = {"layout": "trident", "csv": "c.csv", "features": "job", "signature": GENES, **edit}
  with pytest.raises(CohortError, match=needle):
    spec_lib.load_cohort(spec, tmp_path / "records")
  assert not (tmp_path / "records").exists()


def test_one_new_trident_slide_is_laid_out_as_in_the_cohort(tmp_path):
  """experiments.predict --features on a TRIDENT file uses its patch size like the records do."""
  import types

  from smml_jax.data.h5features import read_h5_grid
  from smml_jax.evaluate.inference import SlideFormat, read_slide_features

  coords = np.array([[0, 0], [2, 0], [0, 2], [2, 2], [4, 4]]) * PS0
  path = tmp_path / "slide.h5"
  _write_h5(
    path,
    np.random.default_rng(0),
    n=5,
    coords=coords,
    attrs={"patch_size": 256, "patch_size_level0": PS0, "overlap": 0},
  )
  run = types.SimpleNamespace(slide_format=SlideFormat("coords", "features", "coords"), grid_side=6, feature_dim=D)
  got = read_slide_features(run, path)
  want = read_h5_grid(path, "features", D, 6, "coords", "coords")
  for key in ("patches", "coords", "tissue_mask"):
    np.testing.assert_array_equal(got[key], want[key])
  assert want["tissue_mask"].sum() == 5  # a 5 x 5 lattice: gaps kept


def test_trident_several_patchings_need_the_patching_field(cohort_files, tmp_path):
  job = cohort_files["root"] / "job"
  other = job / "10x_512px_64px_overlap"
  (job / "20x_256px_0px_overlap").rename(other)
  (job / "20x_256px_0px_overlap").mkdir()
  with pytest.raises(CohortError, match=r"2 <mag>x_<ps>px_<ov>px_overlap folders.*`patching`"):
    spec_lib.load_cohort(_spec(cohort_files), tmp_path / "records")
  cohort = spec_lib.load_cohort(_spec(cohort_files, patching="10x_512px_64px_overlap"), tmp_path / "records")
  assert cohort.feature_dim == D
