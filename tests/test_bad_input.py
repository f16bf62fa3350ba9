"""Every bad input is refused before anything is written: a table of cases over tiny cohorts.

Each case builds a fresh tiny cohort (CLAM or the original's layout), breaks one thing, runs
`python -m experiments.run` (its `main`) with a fresh --out and asserts: exit status 2, a message
naming the file and the field, no file under --out, and no records half-written.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Callable

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

from experiments import run as run_cli
from smml_jax.data import spec as spec_lib
from test_data_original import make_layout, spec_for

D = 8
GENES = {"tumour": ["IDH1", "TP53", "EGFR"], "micro": ["CD4", "CD8A", "PTPRC"]}
ONCOTREE = ["GBM", "ODG", "AASTR"]


def make_clam(root: pathlib.Path, rng: np.random.Generator, n_slides: int = 6) -> dict:
  """A CLAM-layout cohort: slides.csv, h5/<slide>.h5; two slides per patient, agreeing labels."""
  (root / "h5").mkdir(parents=True)
  rows = []
  for i in range(n_slides):
    p = i // 2
    case = f"TCGA-XX-{p:04d}"
    slide = f"{case}-01Z-00-DX{i % 2 + 1}.svs"
    n = int(rng.integers(4, 30))
    with h5py.File(root / "h5" / f"{slide[:-4]}.h5", "w") as f:
      f["features"] = rng.standard_normal((n, D)).astype(np.float32)
      f["coords"] = (rng.integers(0, 20, (n, 2)) * 256).astype(np.int64)
    row = {
      "case_id": case,
      "slide_id": slide,
      "survival_months": 5.0 + 7 * p,
      "censorship": p % 2,
      "IDH1_mut": (p + 1) % 2,
      "oncotree_code": ONCOTREE[p % 3],
    }
    row.update({f"{g}_rnaseq": float(rng.normal()) for s in GENES.values() for g in s})
    rows.append(row)
  pd.DataFrame(rows).to_csv(root / "slides.csv", index=False)
  return {
    "layout": "clam",
    "root": str(root),
    "csv": "slides.csv",
    "features": "h5",
    "grid_side": 4,
    "feature_dim": D,
    "patch_dtype": "float32",
    "signature": GENES,
    "labels": {
      "idh": "IDH1_mut",
      "grade": {"column": "oncotree_code", "map": "oncotree"},
      "histology": {"column": "oncotree_code", "map": "oncotree"},
    },
  }


def _csv(root, edit, name="slides.csv"):
  path = root / name
  edit(pd.read_csv(path)).to_csv(path, index=False)


def _first_h5(root, sub="h5"):
  return sorted((root / sub).glob("*.h5"))[0]


def _write_h5(path, **datasets):
  with h5py.File(path, "w") as f:
    for k, v in datasets.items():
      f[k] = v


def _unlink(path):
  path.unlink()
  return path


def _set(t, row, col, value):
  t[col] = t[col].astype(object)
  t.loc[row, col] = value
  return t


def _clam_stale(root, spec, data_dir):
  spec_lib.load_cohort({**spec, "on_stale": "refuse"}, data_dir)  # records of the good files
  path = _first_h5(root)
  _write_h5(path, features=np.zeros((3, D), np.float32), coords=np.zeros((3, 2), np.int64))
  spec["on_stale"] = "refuse"
  return path


def _expression_without(root, spec, case):
  """Genes as a separate matrix (genes x cases) lacking one case."""
  t = pd.read_csv(root / "slides.csv").drop_duplicates("case_id").set_index("case_id")
  cols = [c for c in t.columns if c.endswith("_rnaseq")]
  m = t[cols].rename(columns=lambda c: c[: -len("_rnaseq")]).drop(index=case).T
  m.rename_axis("gene").to_csv(root / "expression.tsv", sep="\t")
  spec["expression"] = {"path": "expression.tsv"}
  return root / "expression.tsv"


def _trident_two_encoders(root, spec):
  for enc in ("uni_v2", "conch_v15"):
    dest = root / "job" / "20x_256px_0px_overlap" / f"features_{enc}"
    dest.mkdir(parents=True)
    for h5 in (root / "h5").glob("*.h5"):
      (dest / h5.name).write_bytes(h5.read_bytes())
  spec.update(layout="trident", features="job")
  spec.pop("feature_dim")
  return root / "job" / "20x_256px_0px_overlap"


@dataclasses.dataclass(frozen=True)
class Case:
  """break_(root, spec, data_dir) edits files / the spec and may return a path to name."""

  id: str
  layout: str
  break_: Callable
  needles: tuple[str, ...]
  args: tuple[str, ...] = ()
  records_before: bool = False  # the case builds good records first (staleness)


ORIGINAL_TCGA = "TCGA/labels.csv"
CASES = [
  # ---- cohort spec keys and values
  Case(
    "spec_unknown_key",
    "clam",
    lambda r, s, d: s.update(grid_sdie=8),
    ("cohort.yaml", "grid_sdie", "did you mean 'grid_side'"),
  ),
  Case(
    "spec_patch_dtype",
    "clam",
    lambda r, s, d: s.update(patch_dtype="float64"),
    ("cohort.yaml", "patch_dtype", "float64"),
  ),
  Case(
    "spec_map_typo",
    "clam",
    lambda r, s, d: s["labels"]["grade"].update(map="oncotre"),
    ("cohort.yaml", "labels.grade.map", "did you mean 'oncotree'"),
  ),
  Case(
    "spec_cohort_key_typo",
    "original",
    lambda r, s, d: s["cohorts"][0].update(featurs="x"),
    ("cohort.yaml", "cohorts[0]", "featurs", "did you mean 'features'"),
  ),
  Case(
    "spec_missing_file",
    "clam",
    lambda r, s, d: None,
    ("missing.yaml", "does not exist"),
    args=("--data", "{root}/missing.yaml"),
  ),
  # ---- slide tables and labels
  Case("clam_csv_header_only", "clam", lambda r, s, d: _csv(r, lambda t: t.iloc[:0]), ("slides.csv", "no data rows")),
  Case(
    "clam_conflicting_labels",
    "clam",
    lambda r, s, d: _csv(r, lambda t: _set(t, 1, "oncotree_code", "ODG")),
    ("slides.csv", "TCGA-XX-0000", "conflicting", "data row 0", "data row 1"),
  ),
  Case(
    "clam_censorship",
    "clam",
    lambda r, s, d: _csv(r, lambda t: _set(t, 2, "censorship", 2)),
    ("slides.csv", "data row 2", "censorship"),
  ),
  Case(
    "clam_label_value",
    "clam",
    lambda r, s, d: _csv(r, lambda t: _set(t, 2, "oncotree_code", "XYZ")),
    ("slides.csv", "oncotree_code", "'XYZ'"),
  ),
  Case(
    "clam_gene_value",
    "clam",
    lambda r, s, d: _csv(r, lambda t: _set(t, 3, "CD4_rnaseq", "high")),
    ("slides.csv", "data row 3", "CD4_rnaseq"),
  ),
  Case(
    "original_missing_label_column",
    "original",
    lambda r, s, d: _csv(r, lambda t: t.drop(columns=["CDKN2A"]), ORIGINAL_TCGA),
    (ORIGINAL_TCGA, "'cdkn2a'"),
  ),
  Case(
    "original_unknown_grade",
    "original",
    lambda r, s, d: _csv(r, lambda t: _set(t, 2, "grade", "G7"), ORIGINAL_TCGA),
    (ORIGINAL_TCGA, "data row 2", "'grade'", "'G7'"),
  ),
  Case(
    "original_label_csv_header_only",
    "original",
    lambda r, s, d: _csv(r, lambda t: t.iloc[:0], ORIGINAL_TCGA),
    (ORIGINAL_TCGA, "no data rows"),
  ),
  Case(
    "original_conflicting_labels",
    "original",
    lambda r, s, d: _csv(r, lambda t: _set(t, 1, "vital", 1 - t.loc[0, "vital"]), ORIGINAL_TCGA),
    (ORIGINAL_TCGA, "TCGA-AA-0000", "'event'", "data row 1"),
  ),
  # ---- feature and expression files
  Case("clam_missing_h5", "clam", lambda r, s, d: _unlink(_first_h5(r)), ("does not exist", ".h5")),
  Case(
    "clam_feature_dim",
    "clam",
    lambda r, s, d: (
      _write_h5(_first_h5(r), features=np.zeros((5, D + 1), np.float32), coords=np.zeros((5, 2))) or _first_h5(r)
    ),
    ("'features'", f"expected (N, {D})"),
  ),
  Case(
    "clam_expression_missing_case",
    "clam",
    lambda r, s, d: _expression_without(r, s, "TCGA-XX-0001"),
    ("1 case(s)", "TCGA-XX-0001", "no expression"),
  ),
  Case(
    "clam_gene_list_file_missing",
    "clam",
    lambda r, s, d: s.update(signature={"tumour": "tumour.txt", "micro": ["CD4"]}),
    ("tumour.txt", "does not exist"),
  ),
  Case(
    "trident_encoder_not_given",
    "clam",
    lambda r, s, d: _trident_two_encoders(r, s),
    ("2 features_<encoder> folders", "conch_v15", "`encoder`"),
  ),
  Case(
    "clam_nan_features",
    "clam",
    lambda r, s, d: (
      _write_h5(_first_h5(r), features=np.full((5, D), np.nan, np.float32), coords=np.zeros((5, 2))) or _first_h5(r)
    ),
    ("'features'", "NaN"),
  ),
  Case(
    "original_missing_star_file",
    "original",
    lambda r, s, d: next((r / "TCGA").rglob("sample1.*.tsv")).unlink(),
    ("sample1.rna_seq.augmented_star_gene_counts.tsv", "does not exist"),
  ),
  Case("clam_stale_records_refused", "clam", _clam_stale, ("changed", "on_stale: refuse"), records_before=True),
  # ---- run config (refused at parse time)
  Case(
    "config_removed_optim_epochs",
    "clam",
    lambda r, s, d: None,
    ("optim.epochs", "removed"),
    args=("--set", "optim.epochs=3"),
  ),
  Case("config_zero_epochs", "clam", lambda r, s, d: None, ("train.epochs", "positive"), args=("--epochs", "0")),
  Case(
    "config_zero_keep_checkpoints",
    "clam",
    lambda r, s, d: None,
    ("--keep-checkpoints", "at least 1"),
    args=("--keep-checkpoints", "0"),
  ),
  Case(
    "config_negative_learning_rate",
    "clam",
    lambda r, s, d: None,
    ("optim.learning_rate", "positive"),
    args=("--set", "optim.learning_rate=-1"),
  ),
  Case(
    "config_model_option",
    "clam",
    lambda r, s, d: None,
    ("model_options", "dimm"),
    args=("--set", "model_options.dimm=8"),
  ),
  Case(
    "config_selection_metric",
    "clam",
    lambda r, s, d: None,
    ("train.selection_metric", "did you mean 'c_index'"),
    args=("--task", "survival", "--set", "train.selection_metric=cindex"),
  ),
]


def _files(path: pathlib.Path) -> list[str]:
  return sorted(str(p) for p in path.rglob("*") if p.is_file()) if path.exists() else []


def _record_files(data_dir: pathlib.Path) -> dict[str, int]:
  return {str(p): p.stat().st_mtime_ns for p in data_dir.rglob("*") if p.is_file()}


def _setup(case: Case, tmp_path: pathlib.Path):
  root = tmp_path / "raw"
  rng = np.random.default_rng(0)
  if case.layout == "clam":
    spec = make_clam(root, rng)
  else:
    make_layout(root, rng)
    spec = spec_for(root)
  data_dir = tmp_path / "records"
  named = case.break_(root, spec, data_dir)
  spec_path = root / "cohort.yaml"
  spec_path.write_text(yaml.safe_dump(spec))
  return root, spec_path, data_dir, named


def _argv(case: Case, root, spec_path, data_dir, out) -> list[str]:
  extra = [a.format(root=root) for a in case.args]
  task = [] if "--task" in extra else ["--task", "grading"]
  data = [] if "--data" in extra else ["--data", str(spec_path)]
  return task + data + ["--data-dir", str(data_dir), "--out", str(out), "--no-progress"] + extra


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_naming_file_and_field_and_writes_nothing(case, tmp_path, capsys):
  root, spec_path, data_dir, named = _setup(case, tmp_path)
  records = _record_files(data_dir) if data_dir.exists() else {}
  assert bool(records) == case.records_before
  out = tmp_path / "out"
  code = run_cli.main(_argv(case, root, spec_path, data_dir, out))
  err = capsys.readouterr().err
  assert code == 2, err
  # The last line is the message (tfds' progress bars may come before it).
  assert err.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in err, err
  for needle in case.needles + ((str(named),) if isinstance(named, pathlib.Path) else ()):
    assert needle in err, f"{needle!r} not in: {err}"
  assert _files(out) == []  # nothing written into --out
  after = _record_files(data_dir) if data_dir.exists() else {}
  assert after == records  # no records written, none rebuilt


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_failed_start_leaves_out_absent(case, tmp_path, capsys):
  root, spec_path, data_dir, _ = _setup(case, tmp_path)
  out = tmp_path / "out"
  assert run_cli.main(_argv(case, root, spec_path, data_dir, out)) == 2
  assert not out.exists(), os.listdir(out)


@pytest.mark.parametrize("layout", ["clam", "original"])
def test_the_unbroken_tiny_cohorts_load(tmp_path, layout):
  case = Case("good", layout, lambda r, s, d: None, ())
  _, spec_path, data_dir, _ = _setup(case, tmp_path)
  cohort = spec_lib.load_cohort(spec_path, data_dir)
  assert len(cohort) >= 6 and cohort.grid_side == 4
