"""Records of the original layout are stamped with their input files: reused while every input file
is unchanged, rebuilt (saying which file changed) or refused (`on_stale: refuse`) when one changed."""

from __future__ import annotations

import pathlib

import numpy as np
import pandas as pd
import pytest

import test_data_original as original
from smml_jax.data import spec as spec_lib


@pytest.fixture
def layout(tmp_path):
  root = tmp_path / "raw"
  return root, original.make_layout(root, np.random.default_rng(0))


def _bump(path: pathlib.Path) -> None:
  """A later mtime, as a re-extraction would leave (whatever the file system's resolution)."""
  st = path.stat()
  import os

  os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


def test_records_are_reused_while_every_input_file_is_unchanged(layout, tmp_path):
  root, _ = layout
  first = spec_lib.load_cohort(original.spec_for(root), tmp_path / "r")
  info = first.path / "dataset_info.json"
  before = info.stat().st_mtime_ns
  again = spec_lib.load_cohort(original.spec_for(root), tmp_path / "r")
  assert again.path == first.path and info.stat().st_mtime_ns == before


@pytest.mark.parametrize("which", ["features", "expression", "allen"])
def test_changed_input_file_rebuilds_the_records_and_says_which(layout, tmp_path, caplog, which):
  root, truth = layout
  spec_lib.load_cohort(original.spec_for(root), tmp_path / "r")
  slide = truth["slides"][0]
  if which == "features":  # re-extracted features: same shape, other values
    path = root / "TCGA/Res50_feature_16_fixdim0_norm" / f"{slide}.h5"
    new = np.full((1, len(truth["feats"][slide]), original.D), 7.0, np.float32)
    original._write_h5(path, new)
  elif which == "expression":
    path = root / "TCGA/transcriptomeProfiling_geneExpression/uuid0/sample0.rna_seq.augmented_star_gene_counts.tsv"
    original._write_star(path, dict(truth["genes"][slide], GENE_C=1234.5))
  else:
    path = root / "IvYGAP/gene_expression_matrix_2014-11-25/fpkm_table.csv"
    table = pd.read_csv(path)
    table.iloc[:, 1] = table.iloc[:, 1] + 1.0
    table.to_csv(path, index=False)
  _bump(path)
  with caplog.at_level("WARNING"):
    cohort = spec_lib.load_cohort(original.spec_for(root), tmp_path / "r")
  assert str(path) in caplog.text and "changed" in caplog.text and "rebuilding" in caplog.text
  if which == "features":
    np.testing.assert_array_equal(cohort.source[0]["patches"], 7.0)
  elif which == "expression":
    assert cohort.genes("tumour")[0][cohort.gene_names["tumour"].index("GENE_C")] == 1234.5
  else:
    i = len(truth["slides"]) - 3  # the first IvYGAP slide
    np.testing.assert_allclose(
      cohort.genes("tumour")[i],
      [truth["genes"][truth["slides"][i]][g] + 1 for g in cohort.gene_names["tumour"]],
      rtol=1e-6,
    )


def test_stale_records_can_be_refused(layout, tmp_path):
  root, truth = layout
  refuse = original.spec_for(root, on_stale="refuse")
  first = spec_lib.load_cohort(refuse, tmp_path / "r")
  path = root / "IvYGAP/Res50_feature_16_fixdim0_norm" / f"{truth['slides'][-1]}.h5"
  # Another shape: the content hash differs too.
  original._write_h5(path, np.zeros((1, 3, original.D), np.float32))
  original._expect_error(refuse, tmp_path / "r", str(path), "changed", "content", "on_stale: refuse")
  assert (first.path / "smml_cohort.json").is_file()  # the old records are left alone
  path.unlink()
  original._expect_error(refuse, tmp_path / "r", f"deleted {path}")


def test_records_without_input_stamps_are_rebuilt(layout, tmp_path, caplog):
  import json

  root, _ = layout
  first = spec_lib.load_cohort(original.spec_for(root), tmp_path / "r")
  sidecar = first.path / "smml_cohort.json"
  meta = json.loads(sidecar.read_text())
  del meta["inputs"]  # as written before input files were stamped
  sidecar.write_text(json.dumps(meta))
  with caplog.at_level("WARNING"):
    again = spec_lib.load_cohort(original.spec_for(root), tmp_path / "r")
  assert "predate input-file stamps" in caplog.text
  assert "inputs" in json.loads((again.path / "smml_cohort.json").read_text())
