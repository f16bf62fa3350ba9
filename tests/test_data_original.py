"""The original's TCGA + IvYGAP layout, built from small files written in tmp_path."""

from __future__ import annotations

import pathlib

import h5py
import numpy as np
import pandas as pd
import pytest

from smml_jax.data import spec as spec_lib
from smml_jax.data.errors import CohortError

D = 12
N_PATCHES = 16  # grid 4 x 4
# Signature order deliberately differs from the expression files' order; GENE_X is duplicated
# within Tumor, GENE_B is in both subspaces, GENE_ZZ exists in no expression source.
SIGNATURE = [
  ("GENE_C", "Tumor"),
  ("GENE_A", "Tumor"),
  ("GENE_X", "Tumor"),
  ("GENE_X", "Tumor"),
  ("GENE_B", "Tumor"),
  ("GENE_ZZ", "Tumor"),
  ("GENE_M2", "Immune"),
  ("GENE_M1", "Immune"),
  ("GENE_B", "Immune"),
]
ALL_GENES = ["GENE_A", "GENE_B", "GENE_C", "GENE_M1", "GENE_M2", "GENE_X", "GENE_Q"]


def _write_h5(path: pathlib.Path, feats: np.ndarray) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  with h5py.File(path, "w") as f:
    f["Res_feature"] = feats


def _write_star(path: pathlib.Path, values: dict[str, float]) -> None:
  """A GDC STAR augmented gene counts TSV: one comment line, then the table."""
  path.parent.mkdir(parents=True, exist_ok=True)
  genes = list(values)[::-1]  # file order != signature order
  rows = ["gene_id\tgene_name\tgene_type\tunstranded\ttpm_unstranded\tfpkm_uq_unstranded"]
  rows += ["N_unmapped\t\t\t1\t\t"]
  for i, g in enumerate(genes):
    rows.append(f"ENSG{i:05d}\t{g}\tprotein_coding\t5\t1.0\t{values[g]}")
  rows.append("ENSG99999\tGENE_A\tprotein_coding\t5\t1.0\t99999")  # duplicate: first wins
  path.write_text("# gene-model: GENCODE v36\n" + "\n".join(rows) + "\n")


def make_layout(root: pathlib.Path, rng: np.random.Generator, n_tcga: int = 5, n_ivy: int = 3) -> dict:
  """Writes a TCGA and an IvYGAP cohort; returns the truth (features, genes, labels)."""
  truth = {"slides": [], "feats": {}, "genes": {}}
  rows = []
  grades, idh, codel, cn = ["G2", "G3", "G4"], ["WT", "Mutant"], ["non-codel", "codel"], [-2, 0, 1]
  hist = ["glioblastoma", "astrocytoma", "oligodendroglioma", "oligoastrocytoma"]
  for i in range(n_tcga):
    patient = f"TCGA-AA-{i // 2:04d}"  # two slides per patient
    slide = f"{patient}-01Z-00-DX{i % 2 + 1}"
    values = {g: float(rng.uniform(0, 50)) for g in ALL_GENES}
    gene_dir, gene_file = f"uuid{i}", f"sample{i}.rna_seq.augmented_star_gene_counts.tsv"
    _write_star(root / "TCGA/transcriptomeProfiling_geneExpression" / gene_dir / gene_file, values)
    n = int(rng.integers(5, 40))
    feats = rng.standard_normal((1, n, D)).astype(np.float32)
    _write_h5(root / "TCGA/Res50_feature_16_fixdim0_norm" / f"{slide}.h5", feats)
    p = i // 2  # a patient's slides carry the same labels (conflicts are an error)
    rows.append(
      [
        patient,
        slide,
        hist[p % 4],
        grades[p % 3],
        idh[(p + 1) % 2],
        codel[(p // 2) % 2],
        cn[p % 3],
        0,
        0,
        0,
        0,
        gene_dir,
        gene_file,
        p % 2,
        100.0 + 50 * p,
      ]
    )
    truth["slides"].append(slide)
    truth["feats"][slide] = feats[0]
    truth["genes"][slide] = values
  cols = [
    "patient",
    "slide",
    "histology",
    "grade",
    "IDH",
    "1p19q",
    "CDKN2A",
    "a",
    "b",
    "c",
    "d",
    "folder",
    "file",
    "vital",
    "days",
  ]
  pd.DataFrame(rows, columns=cols).to_csv(root / "TCGA/labels.csv", index=False)

  allen = root / "IvYGAP/gene_expression_matrix_2014-11-25"
  allen.mkdir(parents=True)
  genes_ivy = ALL_GENES[:-1]  # GENE_Q is TCGA-only: not in the signature, harmless
  pd.DataFrame({"gene_id": np.arange(len(genes_ivy)) + 100, "gene_symbol": genes_ivy}).to_csv(
    allen / "rows-genes.csv", index=False
  )
  wells, specimens, ivy_rows, fpkm = [], [], [], {}
  for j in range(n_ivy):
    slide = f"W{j + 1}-1-{j + 1}-E.02"
    well = str(1000 + j)
    wells.append(well)
    specimens.append(f"W{j + 1}-1-{j + 1}-A.01")  # shares the first three dash parts
    values = {g: float(rng.uniform(0, 50)) for g in genes_ivy}
    fpkm[well] = [values[g] for g in genes_ivy]
    feats = rng.standard_normal((1, N_PATCHES, D)).astype(np.float32)
    _write_h5(root / "IvYGAP/Res50_feature_16_fixdim0_norm" / f"{slide}.h5", feats)
    ivy_rows.append([f"W{j + 1}", slide, "glioblastoma", "G4", "WT", "non-codel", 0, 0, 0, 0, 0, "", "", 1, 300.0 + j])
    truth["slides"].append(slide)
    truth["feats"][slide] = feats[0]
    truth["genes"][slide] = values
  pd.DataFrame({"rna_well_id": wells, "specimen_name": specimens}).to_csv(allen / "columns-samples.csv", index=False)
  table = pd.DataFrame(fpkm)
  table.insert(0, "gene_id\\rna_well_id", np.arange(len(genes_ivy)) + 100)
  table.to_csv(allen / "fpkm_table.csv", index=False)
  pd.DataFrame(ivy_rows, columns=cols).to_csv(root / "IvYGAP/labels.csv", index=False)
  pd.DataFrame(SIGNATURE, columns=["gene_symbol", "Type"]).to_csv(root / "signature.csv", index=False)
  return truth


def spec_for(root: pathlib.Path, **overrides) -> dict:
  spec = {
    "layout": "original",
    "root": str(root),
    "grid_side": 4,
    "feature_dim": D,
    "patch_dtype": "float32",
    "signature": {"path": "signature.csv"},
    "cohorts": [
      {
        "name": "TCGA",
        "labels": "TCGA/labels.csv",
        "features": "TCGA/Res50_feature_16_fixdim0_norm",
        "genes": {"format": "gdc_star", "folder": "TCGA/transcriptomeProfiling_geneExpression"},
      },
      {
        "name": "IvYGAP",
        "labels": "IvYGAP/labels.csv",
        "features": "IvYGAP/Res50_feature_16_fixdim0_norm",
        "genes": {"format": "allen", "folder": "IvYGAP/gene_expression_matrix_2014-11-25"},
      },
    ],
  }
  spec.update(overrides)
  return spec


@pytest.fixture
def layout(tmp_path):
  root = tmp_path / "raw"
  return root, make_layout(root, np.random.default_rng(0))


def test_original_layout_builds_and_aligns_genes_by_signature(layout, tmp_path):
  root, truth = layout
  cohort = spec_lib.load_cohort(spec_for(root), tmp_path / "records")
  assert cohort.gene_names == {
    "tumour": ["GENE_C", "GENE_A", "GENE_X", "GENE_B"],
    "micro": ["GENE_M2", "GENE_M1", "GENE_B"],
  }
  assert cohort.info["missing_genes"]["tumour"] == ["GENE_ZZ"]
  assert list(cohort.slides["slide_id"]) == truth["slides"]
  for i, slide in enumerate(truth["slides"]):
    ex = cohort.source[i]
    for sub in ("tumour", "micro"):
      expected = [truth["genes"][slide][g] for g in cohort.gene_names[sub]]
      np.testing.assert_allclose(ex[f"genes_{sub}"], expected, rtol=1e-6)
    feats = truth["feats"][slide]
    n = len(feats)
    if n <= N_PATCHES:  # tiled: whole copies, then the first remainder patches
      idx = np.concatenate([np.tile(np.arange(n), N_PATCHES // n), np.arange(N_PATCHES % n)])
    else:
      idx = np.around(np.arange(N_PATCHES) * (n / N_PATCHES)).astype(int)
    np.testing.assert_allclose(ex["patches"], feats[idx], rtol=1e-6)


def test_original_layout_labels_follow_who2021(layout, tmp_path):
  root, _ = layout
  cohort = spec_lib.load_cohort(spec_for(root), tmp_path / "records")
  raw = pd.concat([pd.read_csv(root / "TCGA/labels.csv"), pd.read_csv(root / "IvYGAP/labels.csv")])
  s = cohort.slides
  np.testing.assert_array_equal(s["grade"], raw["grade"].map({"G2": 0, "G3": 1, "G4": 2}))
  np.testing.assert_array_equal(s["idh"], (raw["IDH"] == "Mutant").astype(int))
  np.testing.assert_array_equal(s["cdkn2a"], (raw["CDKN2A"] <= -1).astype(int))
  np.testing.assert_array_equal(s["event"], raw["vital"])
  np.testing.assert_allclose(s["surv_time"], raw["days"])
  # The original's own rule, written out: WT -> 0, codel -> 3, CDKN2A del or G4 -> 1, else 2.
  for (_, r), diag in zip(raw.iterrows(), s["diagnosis"]):
    want = (
      0
      if r["IDH"] == "WT"
      else 3
      if r["1p19q"] == "codel"
      else 1
      if r["CDKN2A"] in (-2, -1) or r["grade"] == "G4"
      else 2
    )
    assert diag == want
  hist = {"oligoastrocytoma": 0, "astrocytoma": 1, "oligodendroglioma": 2, "glioblastoma": 3}
  np.testing.assert_array_equal(s["histology"], raw["histology"].map(hist))


def _expect_error(spec, data_dir, *needles):
  with pytest.raises(CohortError) as err:
    spec_lib.load_cohort(spec, data_dir)
  for needle in needles:
    assert needle in str(err.value), str(err.value)


def test_original_layout_missing_feature_file(layout, tmp_path):
  root, truth = layout
  (root / "TCGA/Res50_feature_16_fixdim0_norm" / f"{truth['slides'][1]}.h5").unlink()
  _expect_error(spec_for(root), tmp_path / "r", truth["slides"][1], "does not exist")
  assert not (tmp_path / "r").exists() or not list((tmp_path / "r").rglob("*.array_record*"))


def test_original_layout_wrong_feature_dim(layout, tmp_path):
  root, truth = layout
  _write_h5(
    root / "TCGA/Res50_feature_16_fixdim0_norm" / f"{truth['slides'][0]}.h5", np.zeros((1, 16, D + 1), np.float32)
  )
  _expect_error(spec_for(root), tmp_path / "r", truth["slides"][0], "Res_feature", f"expected (N, {D})")


def test_original_layout_nan_features(layout, tmp_path):
  root, truth = layout
  feats = np.ones((1, 16, D), np.float32)
  feats[0, 3, 2] = np.nan
  _write_h5(root / "IvYGAP/Res50_feature_16_fixdim0_norm" / f"{truth['slides'][-1]}.h5", feats)
  _expect_error(spec_for(root), tmp_path / "r", truth["slides"][-1], "NaN/inf")


def test_original_layout_unknown_grade(layout, tmp_path):
  root, _ = layout
  table = pd.read_csv(root / "TCGA/labels.csv")
  table.loc[2, "grade"] = "G7"
  table.to_csv(root / "TCGA/labels.csv", index=False)
  _expect_error(spec_for(root), tmp_path / "r", "labels.csv", "data row 2", "'grade'", "'G7'")


def test_original_layout_duplicated_slide(layout, tmp_path):
  root, truth = layout
  table = pd.read_csv(root / "TCGA/labels.csv")
  table.loc[3, "slide"] = table.loc[0, "slide"]
  table.to_csv(root / "TCGA/labels.csv", index=False)
  _expect_error(spec_for(root), tmp_path / "r", "duplicated slide id", truth["slides"][0])


def test_original_layout_signature_matching_no_gene(layout, tmp_path):
  root, _ = layout
  pd.DataFrame([("NOPE1", "Tumor"), ("GENE_M1", "Immune")], columns=["gene_symbol", "Type"]).to_csv(
    root / "signature.csv", index=False
  )
  _expect_error(spec_for(root), tmp_path / "r", "tumour gene signature", "matches no gene")


def test_original_layout_missing_gene_can_be_an_error(layout, tmp_path):
  root, _ = layout
  _expect_error(spec_for(root, missing_genes="error"), tmp_path / "r", "GENE_ZZ", "missing")


def test_original_layout_nan_gene_value(layout, tmp_path):
  root, truth = layout
  slide = truth["slides"][0]
  values = dict(truth["genes"][slide], GENE_M1="nan")
  _write_star(
    root / "TCGA/transcriptomeProfiling_geneExpression/uuid0/sample0.rna_seq.augmented_star_gene_counts.tsv", values
  )
  _expect_error(spec_for(root), tmp_path / "r", slide, "GENE_M1", "NaN/inf")


def test_original_layout_unmatched_ivygap_specimen(layout, tmp_path):
  root, _ = layout
  table = pd.read_csv(root / "IvYGAP/labels.csv")
  table.loc[0, "slide"] = "W77-9-9-E.02"
  table.to_csv(root / "IvYGAP/labels.csv", index=False)
  _write_h5(root / "IvYGAP/Res50_feature_16_fixdim0_norm/W77-9-9-E.02.h5", np.zeros((1, 16, D), np.float32))
  _expect_error(spec_for(root), tmp_path / "r", "W77-9-9-E.02", "columns-samples.csv")


def _edit_labels(root, edit, cohort="TCGA", **to_csv):
  path = root / f"{cohort}/labels.csv"
  table = edit(pd.read_csv(path))
  table.to_csv(path, index=False, **to_csv)
  return path


def test_original_layout_labels_are_read_by_header_name_not_position(layout, tmp_path):
  root, _ = layout
  want = spec_lib.load_cohort(spec_for(root), tmp_path / "a").slides
  _edit_labels(root, lambda t: t[t.columns[::-1]])  # every column moved
  got = spec_lib.load_cohort(spec_for(root), tmp_path / "b").slides
  pd.testing.assert_frame_equal(got, want)


def test_original_layout_missing_label_column_is_an_error_naming_it(layout, tmp_path):
  root, _ = layout
  # By position the original would read CDKN2A from the next column and shift every later field.
  _edit_labels(root, lambda t: t.drop(columns=["CDKN2A"]))
  _expect_error(spec_for(root), tmp_path / "r", "TCGA/labels.csv", "'cdkn2a'", "columns: positional")
  assert not (tmp_path / "r").exists()


def test_original_layout_columns_rename_and_drop(layout, tmp_path):
  root, _ = layout
  _edit_labels(root, lambda t: t.rename(columns={"grade": "WHO grade", "CDKN2A": "cn"}))
  spec = spec_for(root)
  spec["cohorts"][0]["columns"] = {"grade": "WHO grade", "cdkn2a": None}
  _edit_labels(root, lambda t: t.drop(columns=["CDKN2A"]), cohort="IvYGAP")
  spec["cohorts"][1]["columns"] = {"cdkn2a": None}
  s = spec_lib.load_cohort(spec, tmp_path / "r").slides
  raw = pd.read_csv(root / "TCGA/labels.csv")
  np.testing.assert_array_equal(s["grade"][: len(raw)], raw["WHO grade"].map({"G2": 0, "G3": 1, "G4": 2}))
  assert (s["cdkn2a"] == -1).all()
  spec["cohorts"][0]["columns"] = {"grade": "WHO_grade"}
  _expect_error(spec, tmp_path / "r2", "no column 'WHO_grade'", "columns.grade")


def test_original_layout_positional_columns_only_when_asked(layout, tmp_path):
  root, _ = layout
  want = spec_lib.load_cohort(spec_for(root), tmp_path / "a").slides
  for cohort in ("TCGA", "IvYGAP"):
    _edit_labels(root, lambda t: t, cohort=cohort, header=False)
  spec = spec_for(root)
  for c in spec["cohorts"]:
    c["columns"] = "positional"
  got = spec_lib.load_cohort(spec, tmp_path / "b").slides
  pd.testing.assert_frame_equal(got, want)


def test_original_layout_label_csv_without_rows(layout, tmp_path):
  root, _ = layout
  _edit_labels(root, lambda t: t.iloc[:0])
  _expect_error(spec_for(root), tmp_path / "r", "TCGA/labels.csv", "no data rows")


def test_original_layout_conflicting_labels_of_one_patient(layout, tmp_path):
  root, truth = layout

  def conflict(t):
    t.loc[1, "grade"] = "G4" if t.loc[0, "grade"] != "G4" else "G2"
    return t

  _edit_labels(root, conflict)
  _expect_error(
    spec_for(root),
    tmp_path / "r",
    "TCGA/labels.csv",
    "TCGA-AA-0000",
    "'grade'",
    "data row 0",
    "data row 1",
    truth["slides"][1],
  )
