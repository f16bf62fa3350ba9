"""Cohort spec validation: unknown keys and bad values are refused before anything is read."""

import pathlib

import pytest
import yaml

from smml_jax.data import spec as spec_lib
from smml_jax.data import spec_fields
from smml_jax.data.errors import CohortError

REPO = pathlib.Path(__file__).resolve().parents[1]
CLAM = {"layout": "clam", "csv": "slides.csv", "features": "h5", "signature": {"path": "sig.csv"}}
ORIGINAL = {
  "layout": "original",
  "signature": {"path": "sig.csv"},
  "cohorts": [{"labels": "l.csv", "features": "f", "genes": {"format": "gdc_star"}}],
}


@pytest.mark.parametrize(
  "spec, needles",
  [
    ({"layout": "synthetic", "grid_sdie": 8}, ("grid_sdie", "did you mean 'grid_side'")),
    ({**CLAM, "grid_sdie": 8}, ("grid_sdie", "did you mean 'grid_side'")),
    ({**ORIGINAL, "feature_dimm": 8}, ("feature_dimm", "did you mean 'feature_dim'")),
    ({**CLAM, "patch_dtype": "float64"}, ("patch_dtype", "float64", "float16")),
    ({**CLAM, "grid_layout": "coord"}, ("grid_layout", "did you mean 'coords'")),
    ({**CLAM, "grid_side": 0}, ("grid_side", ">= 1")),
    ({**CLAM, "feature_dim": "1024"}, ("feature_dim", "integer")),
    ({**CLAM, "omics": ["rnaseq", "cvn"]}, ("omics", "'cvn'", "did you mean 'cnv'")),
    ({**CLAM, "on_stale": "ignore"}, ("on_stale", "rebuild", "refuse")),
    (
      {**CLAM, "labels": {"grade": {"column": "oncotree_code", "map": "oncotre"}}},
      ("labels.grade.map", "did you mean 'oncotree'"),
    ),
    ({**CLAM, "labels": {"grade": {"colum": "oncotree_code"}}}, ("labels.grade", "'colum'", "did you mean 'column'")),
    ({**CLAM, "labels": {"grad": "x"}}, ("labels", "'grad'", "did you mean 'grade'")),
    ({**CLAM, "signature": {"pth": "sig.csv"}}, ("signature", "'pth'", "did you mean 'path'")),
    ({k: v for k, v in CLAM.items() if k != "csv"}, ("needs `csv`",)),
    (
      {**ORIGINAL, "cohorts": [{**ORIGINAL["cohorts"][0], "lables": "x"}]},
      ("cohorts[0]", "'lables'", "did you mean 'labels'"),
    ),
    (
      {**ORIGINAL, "cohorts": [{**ORIGINAL["cohorts"][0], "genes": {"format": "star"}}]},
      ("cohorts[0].genes.format", "gdc_star"),
    ),
    (
      {**ORIGINAL, "cohorts": [{**ORIGINAL["cohorts"][0], "columns": {"grade": 3}}]},
      ("cohorts[0].columns.grade", "columns: positional"),
    ),
    (
      {**ORIGINAL, "cohorts": [{**ORIGINAL["cohorts"][0], "columns": "positonal"}]},
      ("cohorts[0].columns", "did you mean 'positional'"),
    ),
    ({"layout": "synthetic", "csv": "x.csv"}, ("'csv'", "clam layout")),
    ({"layout": "tcga"}, ("`layout` is 'tcga'",)),
  ],
)
def test_bad_spec_is_refused_naming_the_file_and_key(tmp_path, spec, needles):
  path = tmp_path / "cohort.yaml"
  path.write_text(yaml.safe_dump(spec))
  with pytest.raises(CohortError) as err:
    spec_lib.load_cohort(path, tmp_path / "records")
  for needle in (str(path), *needles):
    assert needle in str(err.value), str(err.value)
  assert not (tmp_path / "records").exists()


def test_every_layout_field_is_documented_and_the_docs_page_is_current():
  page = (REPO / "docs" / "cohort_spec.md").read_text()
  assert page == spec_fields.reference_markdown(), (
    "docs/cohort_spec.md is stale: regenerate it with `python -c \"from smml_jax.data import "
    "spec_fields as s; open('docs/cohort_spec.md', 'w').write(s.reference_markdown())\"`"
  )
  for layout in spec_fields.LAYOUTS:
    for name, field in spec_fields.fields_of(layout).items():
      assert f"`{name}`" in page and field.meaning, (layout, name)
  assert "docs/cohort_spec.md" in (REPO / "README.md").read_text()
