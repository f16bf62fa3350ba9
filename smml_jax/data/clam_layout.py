"""The CLAM / MCAT layout most public pipelines produce, and TRIDENT's feature folders.

A CSV (or zipped CSV) with one row per slide: `case_id`, `slide_id`, `survival_months`,
`censorship` (1 = censored), optional label columns, and genomic columns `<GENE>_rnaseq`,
`<GENE>_cnv`, `<GENE>_mut`; a features folder of `<slide_id>.h5` files with `features` (N, D)
and `coords` (N, 2) (the slide id's WSI suffix, e.g. `.svs`, is dropped for the file name). With
`layout: trident` the folder is found in a TRIDENT job (feature_folders.py). D is read from the
files. The gene subspaces come from a signature (genes.read_signature); each subspace holds, for
each signature gene in order, the columns `<GENE>_<omic>` for the configured omics (default
`rnaseq`), or, with `expression: {path}`, the genes of a separate matrix joined on case id
(expression.py; named `<GENE>_rnaseq` like the CSV's columns).

Labels: `labels:` maps a field (idh, codel, cdkn2a, grade, histology) to a column name or to
{column, map}; `map` is a value -> raw label dict (parsed by labels.parse_labels) or the preset
`oncotree` (histology: GBM -> glioblastoma, ASTR/AASTR -> astrocytoma, ODG/AODG ->
oligodendroglioma, OAST/AOAST -> oligoastrocytoma; grade: ASTR/ODG/OAST -> G2, AASTR/AODG/AOAST
-> G3, GBM -> G4). Missing label fields are -1.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Mapping

import numpy as np
import pandas as pd

from smml_jax.data import builders, expression as expression_lib, genes as genes_lib, missing as missing_lib, tabular
from smml_jax.data.bags import GRID_LAYOUTS
from smml_jax.data.errors import CohortError
from smml_jax.data.feature_folders import clam_folder, slide_file_stem, trident_folder
from smml_jax.data.h5features import check_h5, infer_feature_dim, read_h5_grid

DAYS_PER_MONTH = 30.44
ONCOTREE = {
  "histology": {
    "GBM": "glioblastoma",
    "ASTR": "astrocytoma",
    "AASTR": "astrocytoma",
    "ODG": "oligodendroglioma",
    "AODG": "oligodendroglioma",
    "OAST": "oligoastrocytoma",
    "AOAST": "oligoastrocytoma",
  },
  "grade": {"ASTR": "G2", "ODG": "G2", "OAST": "G2", "AASTR": "G3", "AODG": "G3", "AOAST": "G3", "GBM": "G4"},
}
LABEL_FIELDS = ("idh", "codel", "cdkn2a", "grade", "histology")
REQUIRED = ("case_id", "slide_id", "survival_months", "censorship")
__all__ = ["ClamSource", "slide_file_stem", "DAYS_PER_MONTH"]


@dataclasses.dataclass(frozen=True)
class ClamSource:
  """CohortSource for a spec with `layout: clam` or `layout: trident` (spec_fields.py)."""

  spec: Mapping[str, Any]
  root: pathlib.Path
  layout: str = "clam"

  @property
  def on_stale(self) -> str:
    return self.spec.get("on_stale", "rebuild")

  def fingerprint(self) -> dict[str, Any]:
    """The spec's identity (names the records folder); the files' stamps are `input_files`."""
    spec = {k: v for k, v in self.spec.items() if k != "on_stale"}  # not part of the identity
    return {"spec": spec, "root": str(self.root)}

  def feature_folder(self) -> pathlib.Path:
    """The folder of `<slide>.h5` files (CLAM's h5_files, or TRIDENT's features_<encoder>)."""
    features = tabular.resolve(self.root, self.spec["features"])
    if self.layout == "trident":
      return trident_folder(features, self.spec.get("encoder"), self.spec.get("patching"))
    return clam_folder(features)

  def input_files(self) -> list[pathlib.Path]:
    """Every file the records are built from: CSV, signature, expression, each slide's .h5."""
    csv = tabular.resolve(self.root, self.spec["csv"])
    files = [csv] + genes_lib.resolve_signature_paths(self.spec.get("signature", {}), self.root)[1]
    if "expression" in self.spec:
      files.append(tabular.resolve(self.root, self.spec["expression"]["path"]))
    raw = genes_lib.read_table(csv, "CLAM CSV")
    if "slide_id" not in raw.columns:
      raise CohortError(f"{csv}: missing columns ['slide_id']; expected {list(REQUIRED)}")
    slides = raw["slide_id"].astype(str).str.strip()
    if self.spec.get("slides") is not None:
      slides = [s for s in slides if s in {str(x) for x in self.spec["slides"]}]
    feat_dir = self.feature_folder()
    return files + [feat_dir / f"{slide_file_stem(s)}.h5" for s in slides]

  def _label(self, raw: pd.DataFrame, field: str, ref: Any, where: str) -> np.ndarray:
    if isinstance(ref, Mapping):
      if "column" not in ref:
        raise CohortError(f"labels.{field} needs a `column`")
      values = tabular.column(raw, ref["column"], field, where)
      mapping = ref.get("map")
      if mapping == "oncotree":
        if field not in ONCOTREE:
          raise CohortError(f"labels.{field}: the oncotree map gives only {sorted(ONCOTREE)}")
        mapping = ONCOTREE[field]
      if mapping is not None:
        unknown = sorted(set(values.dropna().astype(str)) - set(map(str, mapping)))
        if unknown:
          raise CohortError(
            f"{where}: column {ref['column']!r} (field {field!r}) has values "
            f"{unknown[:5]} the map does not cover ({sorted(map(str, mapping))})"
          )
        values = values.map(lambda v: None if pd.isna(v) else {str(k): m for k, m in mapping.items()}[str(v)])
    else:
      values = tabular.column(raw, ref, field, where)
    return tabular.parse(field, values, where)

  def prepare(self) -> builders.PreparedCohort:
    spec = self.spec
    if "csv" not in spec or "features" not in spec:
      raise CohortError("clam layout spec needs `csv` and `features`")
    csv = tabular.resolve(self.root, spec["csv"])
    where = str(csv)
    raw = genes_lib.read_table(csv, "CLAM CSV")
    if raw.empty:
      raise CohortError(f"CLAM CSV {where} has no data rows (expected one row per slide)")
    missing = [c for c in REQUIRED if c not in raw.columns]
    if missing:
      raise CohortError(f"{where}: missing columns {missing}; expected {list(REQUIRED)}")
    raw["slide_id"] = raw["slide_id"].astype(str).str.strip()
    if spec.get("slides") is not None:
      wanted = [str(s) for s in spec["slides"]]
      unknown = sorted(set(wanted) - set(raw["slide_id"]))
      if unknown:
        raise CohortError(f"{where}: slides {unknown[:5]} listed in the spec are not in the CSV")
      raw = raw[raw["slide_id"].isin(wanted)].reset_index(drop=True)

    grid_side = int(spec.get("grid_side", 16))
    layout = spec.get("grid_layout", "sample")
    if layout not in GRID_LAYOUTS:
      raise CohortError(f"grid_layout must be one of {GRID_LAYOUTS}, got {layout!r}")
    feat_dir = self.feature_folder()
    fds, cds = spec.get("feature_dataset", "features"), spec.get("coords_dataset", "coords")
    h5_paths = [feat_dir / f"{slide_file_stem(s)}.h5" for s in raw["slide_id"]]
    if spec.get("missing_features", "error") == "skip":
      keep = np.array([p.is_file() for p in h5_paths])
      raw = raw[keep].reset_index(drop=True)
      h5_paths = [p for p, k in zip(h5_paths, keep) if k]
      if not h5_paths:
        raise CohortError(f"{feat_dir}: no feature file for any slide of {where}")
    missing_h5 = [p for p in h5_paths if not p.is_file()]
    if missing_h5:
      raise CohortError(
        f"feature file {missing_h5[0]} does not exist ({len(missing_h5)} of "
        f"{len(h5_paths)} slides of {where} have no .h5 in {feat_dir}; "
        "`missing_features: skip` leaves them out)"
      )
    feature_dim = infer_feature_dim(h5_paths, fds, spec.get("feature_dim"))
    for p in h5_paths:
      check_h5(p, fds, feature_dim, cds, need_coords=layout == "coords")

    labels_spec = spec.get("labels") or {}
    unknown = sorted(set(labels_spec) - set(LABEL_FIELDS))
    if unknown:
      raise CohortError(f"labels: unknown fields {unknown}; expected some of {LABEL_FIELDS}")
    n = len(raw)
    status = {
      f: (self._label(raw, f, labels_spec[f], where) if f in labels_spec else np.full(n, -1, np.int64))
      for f in LABEL_FIELDS
    }
    censorship = tabular.numeric(raw["censorship"], "censorship", where)
    bad = np.flatnonzero(~np.isin(censorship, (0.0, 1.0)) & ~np.isnan(censorship))
    if bad.size:
      raise CohortError(
        f"{where}, data row {bad[0]}: censorship {censorship[bad[0]]!r} is not 0 (event) or 1 (censored)"
      )
    months = tabular.numeric(raw["survival_months"], "survival_months", where)
    event = np.where(np.isnan(censorship), -1, 1 - np.nan_to_num(censorship)).astype(np.int64)
    tabular.check_patient_labels(
      pd.DataFrame(
        {
          "patient_id": raw["case_id"].astype(str).str.strip(),
          "slide_id": raw["slide_id"],
          **status,
          "censorship": censorship,
          "survival_months": months,
        }
      ),
      where,
    )
    table = tabular.slide_table(
      raw["case_id"].astype(str).str.strip(), raw["slide_id"], status, months * DAYS_PER_MONTH, event, where
    )

    sig = genes_lib.read_signature(genes_lib.resolve_signature_paths(spec.get("signature") or {}, self.root)[0])
    policy = spec.get("missing_expression", "error")
    if "expression" in spec:
      mats, names, dropped = self._matrix_genes(sig, raw["case_id"].astype(str).str.strip(), policy)
      omics = ["rnaseq"]
    else:
      mats, names, dropped, omics = self._csv_genes(sig, raw, where)
    # A patient whose genomic values are all absent has no expression (refused unless allowed).
    absent_info = missing_lib.absent_expression(table, mats["tumour"], mats["micro"], policy, where)

    def read_slide(i: int) -> dict[str, np.ndarray]:
      return read_h5_grid(h5_paths[i], fds, feature_dim, grid_side, layout, cds)

    return builders.PreparedCohort(
      table=table,
      genes_tumour=mats["tumour"],
      genes_micro=mats["micro"],
      gene_names=names,
      grid_side=grid_side,
      feature_dim=feature_dim,
      read_slide=read_slide,
      patch_dtype=spec.get("patch_dtype", "float16"),
      gene_transform=spec.get("gene_transform", "zscore"),
      info={"missing_genes": dropped, "omics": omics, **absent_info},
    )

  def _matrix_genes(self, sig, case_ids: pd.Series, policy: str):
    """Subspace matrices from `expression: {path, orientation}`, joined on case id; with
    `missing_expression: allow` a case the matrix lacks is an all-NaN (absent) row."""
    expr = self.spec["expression"]
    matrix = expression_lib.read_expression_matrix(
      tabular.resolve(self.root, expr["path"]), list(case_ids), expr.get("orientation", "auto")
    )
    kept, dropped = genes_lib.resolve_genes(
      sig, [set(matrix.columns)], matrix.attrs["path"], self.spec.get("missing_genes", "drop")
    )
    mats, names = {}, {}
    for key in ("tumour", "micro"):
      values, missing = expression_lib.join_expression(matrix, case_ids, kept[key])
      if policy == "allow":  # absent cases stay NaN rows; the values of the others must be finite
        present = ~case_ids.isin(missing).to_numpy()
        expression_lib.require_complete(matrix, [], values[present], list(case_ids[present]), kept[key])
      else:
        expression_lib.require_complete(matrix, missing, values, list(case_ids), kept[key])
      mats[key] = values.astype(np.float32)
      names[key] = [f"{g}_rnaseq" for g in kept[key]]
    return mats, names, dropped

  def _csv_genes(self, sig, raw: pd.DataFrame, where: str):
    """Subspace matrices from the CSV's `<GENE>_<omic>` columns."""
    omics = list(self.spec.get("omics", ["rnaseq"]))
    available = {
      c.rsplit("_", 1)[0]
      for c in raw.columns
      if all(f"{c.rsplit('_', 1)[0]}_{o}" in raw.columns for o in omics) and "_" in c
    }
    kept, dropped = genes_lib.resolve_genes(sig, [available], where, self.spec.get("missing_genes", "drop"))
    mats, names = {}, {}
    for key in ("tumour", "micro"):
      cols = [f"{g}_{o}" for g in kept[key] for o in omics]
      mats[key] = raw[cols].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
      names[key] = cols
    absent = np.all(np.isnan(mats["tumour"]), 1) & np.all(np.isnan(mats["micro"]), 1)
    for key in ("tumour", "micro"):  # rows with every value empty are absent (checked by the caller)
      cols, values = names[key], mats[key]
      bad = ~np.isfinite(values) & ~absent[:, None]
      if bad.any():
        r, c = np.argwhere(bad)[0]
        raise CohortError(
          f"{where}, data row {r} (slide {raw['slide_id'].iloc[r]!r}): column "
          f"{cols[c]!r} is {raw[cols[c]].iloc[r]!r}; expected a finite number"
        )
      mats[key] = values.astype(np.float32)
    return mats, names, dropped, omics
