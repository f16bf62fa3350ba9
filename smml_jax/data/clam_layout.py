"""The CLAM / MCAT layout most public pipelines produce.

A CSV (or zipped CSV) with one row per slide: `case_id`, `slide_id`, `survival_months`,
`censorship` (1 = censored), optional label columns, and genomic columns `<GENE>_rnaseq`,
`<GENE>_cnv`, `<GENE>_mut`; a features folder of `<slide_id>.h5` files with `features` (N, D)
and `coords` (N, 2) (a `.svs` suffix of the slide id is dropped for the file name). The gene
subspaces come from a signature (genes.read_signature); each subspace holds, for each signature
gene in order, the columns `<GENE>_<omic>` for the configured omics (default `rnaseq`).

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

from smml_jax.data import builders, genes as genes_lib, missing as missing_lib, tabular
from smml_jax.data.bags import GRID_LAYOUTS
from smml_jax.data.errors import CohortError
from smml_jax.data.h5features import check_h5, read_h5_grid

DAYS_PER_MONTH = 30.44
ONCOTREE = {
    "histology": {"GBM": "glioblastoma", "ASTR": "astrocytoma", "AASTR": "astrocytoma",
                  "ODG": "oligodendroglioma", "AODG": "oligodendroglioma",
                  "OAST": "oligoastrocytoma", "AOAST": "oligoastrocytoma"},
    "grade": {"ASTR": "G2", "ODG": "G2", "OAST": "G2", "AASTR": "G3", "AODG": "G3",
              "AOAST": "G3", "GBM": "G4"},
}
LABEL_FIELDS = ("idh", "codel", "cdkn2a", "grade", "histology")
REQUIRED = ("case_id", "slide_id", "survival_months", "censorship")


def slide_file_stem(slide_id: str) -> str:
  return slide_id[:-4] if slide_id.lower().endswith(".svs") else slide_id


@dataclasses.dataclass(frozen=True)
class ClamSource:
  """CohortSource for a spec with `layout: clam` (see spec.py for the fields)."""
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

  def input_files(self) -> list[pathlib.Path]:
    """Every file the records are built from: the CSV, the signature and each slide's .h5."""
    csv = tabular.resolve(self.root, self.spec["csv"])
    files = [csv]
    sig = self.spec.get("signature", {})
    if "path" in sig:
      files.append(tabular.resolve(self.root, sig["path"]))
    raw = genes_lib.read_table(csv, "CLAM CSV")
    if "slide_id" not in raw.columns:
      raise CohortError(f"{csv}: missing columns ['slide_id']; expected {list(REQUIRED)}")
    slides = raw["slide_id"].astype(str).str.strip()
    if self.spec.get("slides") is not None:
      slides = [s for s in slides if s in {str(x) for x in self.spec["slides"]}]
    feat_dir = tabular.resolve(self.root, self.spec["features"])
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
          raise CohortError(f"{where}: column {ref['column']!r} (field {field!r}) has values "
                            f"{unknown[:5]} the map does not cover ({sorted(map(str, mapping))})")
        values = values.map(lambda v: None if pd.isna(v) else {str(k): m for k, m in
                                                                 mapping.items()}[str(v)])
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
    feature_dim = int(spec.get("feature_dim", 1024))
    layout = spec.get("grid_layout", "sample")
    if layout not in GRID_LAYOUTS:
      raise CohortError(f"grid_layout must be one of {GRID_LAYOUTS}, got {layout!r}")
    feat_dir = tabular.resolve(self.root, spec["features"])
    fds, cds = spec.get("feature_dataset", "features"), spec.get("coords_dataset", "coords")
    h5_paths = [feat_dir / f"{slide_file_stem(s)}.h5" for s in raw["slide_id"]]
    if spec.get("missing_features", "error") == "skip":
      keep = np.array([p.is_file() for p in h5_paths])
      raw = raw[keep].reset_index(drop=True)
      h5_paths = [p for p, k in zip(h5_paths, keep) if k]
      if not h5_paths:
        raise CohortError(f"{feat_dir}: no feature file for any slide of {where}")
    for p in h5_paths:
      check_h5(p, fds, feature_dim, cds, need_coords=layout == "coords")

    labels_spec = spec.get("labels") or {}
    unknown = sorted(set(labels_spec) - set(LABEL_FIELDS))
    if unknown:
      raise CohortError(f"labels: unknown fields {unknown}; expected some of {LABEL_FIELDS}")
    n = len(raw)
    status = {f: (self._label(raw, f, labels_spec[f], where) if f in labels_spec
                  else np.full(n, -1, np.int64)) for f in LABEL_FIELDS}
    censorship = tabular.numeric(raw["censorship"], "censorship", where)
    bad = np.flatnonzero(~np.isin(censorship, (0.0, 1.0)) & ~np.isnan(censorship))
    if bad.size:
      raise CohortError(f"{where}, data row {bad[0]}: censorship {censorship[bad[0]]!r} is not "
                        "0 (event) or 1 (censored)")
    months = tabular.numeric(raw["survival_months"], "survival_months", where)
    event = np.where(np.isnan(censorship), -1, 1 - np.nan_to_num(censorship)).astype(np.int64)
    tabular.check_patient_labels(pd.DataFrame({
        "patient_id": raw["case_id"].astype(str).str.strip(), "slide_id": raw["slide_id"],
        **status, "censorship": censorship, "survival_months": months}), where)
    table = tabular.slide_table(raw["case_id"].astype(str).str.strip(), raw["slide_id"], status,
                                months * DAYS_PER_MONTH, event, where)

    signature = dict(spec.get("signature") or {})
    if "path" in signature:
      signature["path"] = tabular.resolve(self.root, signature["path"])
    sig = genes_lib.read_signature(signature)
    omics = list(spec.get("omics", ["rnaseq"]))
    available = {c.rsplit("_", 1)[0] for c in raw.columns
                 if all(f"{c.rsplit('_', 1)[0]}_{o}" in raw.columns for o in omics) and "_" in c}
    kept, dropped = genes_lib.resolve_genes(sig, [available], where,
                                            spec.get("missing_genes", "drop"))
    mats, names = {}, {}
    for key in ("tumour", "micro"):
      names[key] = [f"{g}_{o}" for g in kept[key] for o in omics]
      mats[key] = raw[names[key]].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    # A patient whose genomic columns are all empty has no expression (refused unless allowed).
    absent_info = missing_lib.absent_expression(table, mats["tumour"], mats["micro"],
                                                spec.get("missing_expression", "error"), where)
    absent = np.all(np.isnan(mats["tumour"]), 1) & np.all(np.isnan(mats["micro"]), 1)
    for key in ("tumour", "micro"):
      cols, values = names[key], mats[key]
      bad = ~np.isfinite(values) & ~absent[:, None]
      if bad.any():
        r, c = np.argwhere(bad)[0]
        raise CohortError(f"{where}, data row {r} (slide {raw['slide_id'].iloc[r]!r}): column "
                          f"{cols[c]!r} is {raw[cols[c]].iloc[r]!r}; expected a finite number")
      mats[key] = values.astype(np.float32)

    def read_slide(i: int) -> dict[str, np.ndarray]:
      return read_h5_grid(h5_paths[i], fds, feature_dim, grid_side, layout, cds)

    return builders.PreparedCohort(
        table=table, genes_tumour=mats["tumour"], genes_micro=mats["micro"], gene_names=names,
        grid_side=grid_side, feature_dim=feature_dim, read_slide=read_slide,
        patch_dtype=spec.get("patch_dtype", "float16"),
        gene_transform=spec.get("gene_transform", "zscore"),
        info={"missing_genes": dropped, "omics": omics, **absent_info})
