"""tfds array_record records: content, caching, no TensorFlow, specs."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import yaml

from smml_jax.data import builders, cohort as cohort_lib, spec as spec_lib, synthetic
from smml_jax.data.errors import CohortError

SMALL = {
  "layout": "synthetic",
  "n_patients": 24,
  "grid_side": 4,
  "feature_dim": 8,
  "n_genes_tumour": 5,
  "n_genes_micro": 4,
  "seed": 2,
}


def _config(spec):
  return synthetic.SyntheticConfig(**{k: v for k, v in spec.items() if k != "layout"})


def test_records_match_the_generator(tmp_path):
  cohort = spec_lib.load_cohort(SMALL, tmp_path)
  gen = synthetic.generate(_config(SMALL))
  assert len(cohort.source) == len(gen.slides) == len(cohort)
  assert (cohort.grid_side, cohort.feature_dim) == (4, 8)
  assert (cohort.n_genes_tumour, cohort.n_genes_micro) == (5, 4)
  assert list(cohort.path.glob("*.array_record*"))
  for i in (0, len(gen.slides) - 1):
    ex, want = cohort.source[i], gen.slide(i)
    np.testing.assert_allclose(ex["patches"], want["patches"].astype(np.float16))
    assert ex["patches"].dtype == np.float16  # stored as float16 by default
    np.testing.assert_array_equal(ex["immune_mask"], want["immune_mask"])
    np.testing.assert_allclose(ex["genes_tumour"], gen.genes_tumour[i])
    assert ex["slide_id"].decode() == gen.slides["slide_id"].iloc[i]
    assert int(ex["grade"]) == gen.slides["grade"].iloc[i]
  np.testing.assert_allclose(cohort.genes("micro"), gen.genes_micro)
  assert list(cohort.slides["slide_id"]) == list(gen.slides["slide_id"])
  patients = cohort.patients
  assert len(patients) == SMALL["n_patients"]
  assert sum(len(s) for s in patients["slide_indices"]) == len(cohort)


def test_a_build_leaves_no_temporary_folder_behind(tmp_path, monkeypatch):
  # tfds looks a new dataset up on its GCS bucket in a mkdtemp() folder it never removes: one
  # empty /tmp/tmp*tfds per cohort build. A cohort is never published there.
  import tempfile

  scratch = tmp_path / "tmp"
  scratch.mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(scratch))
  spec_lib.load_cohort(SMALL, tmp_path / "data")
  assert sorted(p.name for p in scratch.iterdir()) == []


def test_same_spec_reuses_records_and_changed_spec_rebuilds(tmp_path, monkeypatch):
  first = spec_lib.load_cohort(SMALL, tmp_path)

  def no_prepare(self):
    raise AssertionError("prepare() called although the records exist")

  monkeypatch.setattr(synthetic.SyntheticSource, "prepare", no_prepare)
  again = spec_lib.load_cohort(dict(SMALL), tmp_path)
  assert again.path == first.path and len(again.source) == len(first.source)
  with pytest.raises(AssertionError, match="prepare"):
    spec_lib.load_cohort(dict(SMALL, seed=3), tmp_path)


def test_no_tensorflow_is_imported(tmp_path):
  code = textwrap.dedent(f"""
      import sys
      from smml_jax.data import spec, pipeline
      c = spec.load_cohort({SMALL!r}, {str(tmp_path)!r})
      batch = next(iter(pipeline.BatchIterator(c.source, range(len(c)), 4)))
      assert batch['patches'].shape == (4, 16, 8)
      print('TF' if 'tensorflow' in sys.modules else 'NO_TF')
  """)
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip().splitlines()[-1] == "NO_TF"


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_spec_files(tmp_path, fmt):
  path = tmp_path / f"cohort.{fmt}"
  path.write_text(yaml.safe_dump(SMALL) if fmt == "yaml" else json.dumps(SMALL))
  cohort = spec_lib.load_cohort(str(path), tmp_path / "records")
  assert cohort.layout == "synthetic"
  assert len(cohort) == len(synthetic.generate(_config(SMALL)).slides)


def test_bad_specs(tmp_path):
  with pytest.raises(CohortError, match="does not exist"):
    spec_lib.load_cohort(str(tmp_path / "nope.yaml"), tmp_path)
  with pytest.raises(CohortError, match="`layout` is 'tcga'"):
    spec_lib.load_cohort({"layout": "tcga"}, tmp_path)
  with pytest.raises(CohortError, match="unknown options \\['n_patient'\\]"):
    spec_lib.load_cohort({"layout": "synthetic", "n_patient": 3}, tmp_path)
  bad = tmp_path / "bad.yaml"
  bad.write_text("layout: [unclosed")
  with pytest.raises(CohortError, match="bad.yaml"):
    spec_lib.load_cohort(str(bad), tmp_path)


def test_prepared_cohort_validation_names_the_problem(tmp_path):
  prepared = synthetic.SyntheticSource(_config(SMALL)).prepare()
  genes = prepared.genes_micro.copy()
  genes[3, 1] = np.inf
  bad = builders.PreparedCohort(**{**prepared.__dict__, "genes_micro": genes})
  slide = prepared.table["slide_id"].iloc[3]
  with pytest.raises(CohortError, match=f"{slide}.*NaN/inf.*SYN_M001"):
    builders._validate_prepared(bad)
  dup = prepared.table.copy()
  dup.loc[1, "slide_id"] = dup.loc[0, "slide_id"]
  with pytest.raises(CohortError, match="duplicated slide ids"):
    builders._validate_prepared(builders.PreparedCohort(**{**prepared.__dict__, "table": dup}))


def test_wrong_patch_shape_from_a_reader_is_an_error(tmp_path):
  source = synthetic.SyntheticSource(_config(SMALL))
  prepared = source.prepare()
  real = prepared.read_slide

  def read(i):
    out = dict(real(i))
    if i == 2:
      out["patches"] = out["patches"][:, :-1]
    return out

  class Broken:
    layout = "synthetic"

    def fingerprint(self):
      return {"broken": True}

    def input_files(self):
      return []

    def prepare(self):
      return builders.PreparedCohort(**{**prepared.__dict__, "read_slide": read})

  with pytest.raises(CohortError, match=r"row 2.*'patches' has shape \(16, 7\), expected \(16, 8\)"):
    cohort_lib.build_cohort(Broken(), tmp_path)
  assert not list(tmp_path.rglob("smml_cohort.json"))  # nothing half-written is reused
