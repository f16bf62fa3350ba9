"""The original's layout (TCGA + IvYGAP, as the paper used).

Per cohort: a label CSV (one row per slide), per-slide HDF5 features
`<features>/<slide>.h5` with dataset `Res_feature` (1, 2500, 1024), and gene expression either as
GDC STAR 'augmented gene counts' TSVs (TCGA: `<folder>/<gene_dir column>/<gene_file column>`,
value `fpkm_uq_unstranded`) or as the Allen Institute IvYGAP tables (`rows-genes.csv`,
`columns-samples.csv`, `fpkm_table.csv`; a slide is matched to the specimen whose name shares its
first three dash-separated parts). One gene signature table (gene symbol, Type = Tumor / Immune)
orders the genes of every cohort (see genes.py for duplicated / missing genes).

Label CSV fields are read by HEADER NAME, never by position, so a missing column cannot shift the
later ones: each field looks for the names in `HEADER_NAMES` (case-insensitive); `columns: {field:
header name}` sets others and `{field: null}` drops a field (then missing = -1). A field whose
column is absent is an error naming it. Only `columns: positional` reads a header-less CSV by the
original's positions (`POSITIONS`).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Any, Mapping

import numpy as np
import pandas as pd

from smml_jax.data import builders, genes as genes_lib, missing, tabular
from smml_jax.data.bags import GRID_LAYOUTS
from smml_jax.data.errors import CohortError
from smml_jax.data.h5features import check_h5, read_h5_grid

# The original reads its CSV by position: LIST[i, 0], [i, 1], ... [i, -2], [i, -1]. Used only
# with `columns: positional` (a header-less file).
POSITIONS: dict[str, int] = {
  "patient": 0,
  "slide": 1,
  "histology": 2,
  "grade": 3,
  "idh": 4,
  "codel": 5,
  "cdkn2a": 6,
  "gene_dir": 11,
  "gene_file": 12,
  "vital_status": -2,
  "survival_days": -1,
}
# The original's CSV headers are not published (its code reads positions; it names the slide
# column `WSI_ID` once), so each field accepts these header names, compared case-insensitively.
HEADER_NAMES: dict[str, tuple[str, ...]] = {
  "patient": ("patient", "patient_id", "case_id"),
  "slide": ("slide", "slide_id", "wsi_id"),
  "histology": ("histology",),
  "grade": ("grade",),
  "idh": ("idh", "idh_status"),
  "codel": ("1p19q", "codel", "1p19q_codel"),
  "cdkn2a": ("cdkn2a",),
  "gene_dir": ("gene_dir", "folder"),
  "gene_file": ("gene_file", "file"),
  "vital_status": ("vital_status", "vital"),
  "survival_days": ("survival_days", "days", "survival"),
}
GENE_FORMATS = ("gdc_star", "allen")


@dataclasses.dataclass(frozen=True)
class OriginalSource:
  """CohortSource for a spec with `layout: original` (see spec.py for the fields)."""

  spec: Mapping[str, Any]
  root: pathlib.Path
  layout: str = "original"

  def _cohorts(self) -> list[Mapping[str, Any]]:
    cohorts = self.spec.get("cohorts")
    if not cohorts:
      raise CohortError("original layout spec needs a non-empty `cohorts` list")
    for i, c in enumerate(cohorts):
      for key in ("labels", "features", "genes"):
        if key not in c:
          raise CohortError(f"original layout spec, cohorts[{i}]: missing {key!r}")
      fmt = c["genes"].get("format")
      if fmt not in GENE_FORMATS:
        raise CohortError(f"original layout spec, cohorts[{i}].genes.format is {fmt!r}; expected one of {GENE_FORMATS}")
    return list(cohorts)

  @property
  def on_stale(self) -> str:
    return self.spec.get("on_stale", "rebuild")

  @property
  def _missing_expression(self) -> str:
    return self.spec.get("missing_expression", "error")

  def _expression(self, read, patient: str, slide: str):
    """read() -> the slide's expression; None for a missing source when the spec allows it."""
    try:
      return read()
    except CohortError as e:
      if self._missing_expression == "allow":
        return None
      raise CohortError(
        f"{e} (patient {patient!r}, slide {slide!r}); set `missing_expression: "
        "allow` in the spec to train such patients on histology alone"
      ) from None

  def fingerprint(self) -> dict[str, Any]:
    """The spec's identity (names the records folder); the files' stamps are `input_files`."""
    spec = {k: v for k, v in self.spec.items() if k != "on_stale"}  # not part of the identity
    return {"spec": spec, "root": str(self.root)}

  def input_files(self) -> list[pathlib.Path]:
    """Every file the records are built from: label CSVs, signature, features, expression."""
    files = []
    files += genes_lib.resolve_signature_paths(self.spec.get("signature", {}), self.root)[1]
    for c in self._cohorts():
      files.append(tabular.resolve(self.root, c["labels"]))
      raw, col, where = self._label_table(c)
      if col("slide") is None:
        raise CohortError(f"{where}: `patient` and `slide` columns are required")
      slides = col("slide").astype(str).str.strip()
      feat_dir = tabular.resolve(self.root, c["features"])
      files += [feat_dir / f"{s}.h5" for s in slides]
      folder = tabular.resolve(self.root, c["genes"].get("folder", "."))
      if c["genes"]["format"] == "gdc_star":
        if col("gene_dir") is None or col("gene_file") is None:
          raise CohortError(f"{where}: gdc_star genes need the gene_dir and gene_file columns")
        files += [folder / str(d).strip() / str(f).strip() for d, f in zip(col("gene_dir"), col("gene_file"))]
      else:
        files += [folder / name for name in genes_lib.ALLEN_FILES]
    return files

  def prepare(self) -> builders.PreparedCohort:
    spec = self.spec
    grid_side = int(spec.get("grid_side", 50))
    feature_dim = int(spec.get("feature_dim", 1024))
    layout = spec.get("grid_layout", "sample")
    if layout not in GRID_LAYOUTS:
      raise CohortError(f"grid_layout must be one of {GRID_LAYOUTS}, got {layout!r}")
    feature_dataset = spec.get("feature_dataset", "Res_feature")
    coords_dataset = spec.get("coords_dataset")
    if layout == "coords" and coords_dataset is None:
      raise CohortError("grid_layout: coords needs `coords_dataset` (the original's h5 files store no coordinates)")
    signature = genes_lib.read_signature(genes_lib.resolve_signature_paths(spec.get("signature") or {}, self.root)[0])

    tables, expressions, h5_paths = [], [], []
    for c in self._cohorts():
      table, expr, paths = self._read_cohort(c, feature_dataset, feature_dim, coords_dataset, layout == "coords")
      tables.append(table)
      expressions += expr
      h5_paths += paths
    table = pd.concat(tables, ignore_index=True)
    table = tabular.slide_table(
      table["patient_id"],
      table["slide_id"],
      {k: table[k].to_numpy() for k in ("idh", "codel", "cdkn2a", "grade", "histology")},
      table["surv_days"].to_numpy(),
      table["event"].to_numpy(),
      "original layout (all cohorts)",
    )
    # A gene must be present in every slide's source; NaN values of present genes are errors.
    # A slide without expression (None: `missing_expression: allow`) is an all-NaN row.
    kept, dropped = genes_lib.resolve_genes(
      signature,
      [set(e.index) for e in expressions if e is not None],
      "original layout expression data",
      spec.get("missing_genes", "drop"),
    )
    expressions = [pd.Series(dtype=np.float64) if e is None else e for e in expressions]
    gt = genes_lib.gene_matrix(expressions, kept["tumour"])
    gm = genes_lib.gene_matrix(expressions, kept["micro"])
    absent_info = missing.absent_expression(table, gt, gm, self._missing_expression, "original layout expression data")

    def read_slide(i: int) -> dict[str, np.ndarray]:
      return read_h5_grid(h5_paths[i], feature_dataset, feature_dim, grid_side, layout, coords_dataset)

    return builders.PreparedCohort(
      table=table,
      genes_tumour=gt,
      genes_micro=gm,
      gene_names=kept,
      grid_side=grid_side,
      feature_dim=feature_dim,
      read_slide=read_slide,
      patch_dtype=spec.get("patch_dtype", "float16"),
      gene_transform="log1p_zscore",
      info={
        "missing_genes": dropped,
        "cohorts": [str(c.get("name", c["labels"])) for c in self._cohorts()],
        **absent_info,
      },
    )

  def _label_table(self, c: Mapping[str, Any]):
    """(raw label table, field -> column Series or None, the file's name for messages)."""
    path = tabular.resolve(self.root, c["labels"])
    positional = c.get("columns") == "positional"
    raw = genes_lib.read_table(path, "label CSV", **({"header": None} if positional else {}))
    where = str(path)
    if raw.empty:
      raise CohortError(f"label CSV {where} has no data rows (expected one row per slide)")
    needed = [f for f in POSITIONS if c["genes"]["format"] == "gdc_star" or f not in ("gene_dir", "gene_file")]
    cols = dict(POSITIONS) if positional else _header_columns(raw, c.get("columns") or {}, needed, where)

    def col(field):
      return None if cols.get(field) is None else tabular.column(raw, cols[field], field, where)

    return raw, col, where

  def _read_cohort(
    self, c: Mapping[str, Any], feature_dataset: str, feature_dim: int, coords_dataset: str | None, need_coords: bool
  ):
    raw, col, where = self._label_table(c)
    slide = col("slide")
    if slide is None or col("patient") is None:
      raise CohortError(f"{where}: `patient` and `slide` columns are required")
    slide = slide.astype(str).str.strip()
    n = len(raw)
    status = {}
    for field in ("idh", "codel", "cdkn2a", "grade", "histology"):
      values = col(field)
      status[field] = np.full(n, -1, np.int64) if values is None else tabular.parse(field, values, where)
    vital = col("vital_status")
    event = np.full(n, -1, np.int64) if vital is None else tabular.parse("event", vital, where)
    days = col("survival_days")
    surv = np.full(n, math.nan) if days is None else tabular.numeric(days, "survival_days", where)
    table = pd.DataFrame(
      {
        "patient_id": col("patient").astype(str).str.strip(),
        "slide_id": slide,
        **status,
        "event": event,
        "surv_days": surv,
      }
    )
    tabular.check_patient_labels(table, where)

    feat_dir = tabular.resolve(self.root, c["features"])
    h5_paths = [feat_dir / f"{s}.h5" for s in slide]
    for p in h5_paths:  # fail before anything is written
      check_h5(p, feature_dataset, feature_dim, coords_dataset, need_coords)

    g = c["genes"]
    folder = tabular.resolve(self.root, g.get("folder", "."))
    if g["format"] == "gdc_star":
      gene_dir, gene_file = col("gene_dir"), col("gene_file")
      if gene_dir is None or gene_file is None:
        raise CohortError(f"{where}: gdc_star genes need the gene_dir and gene_file columns")
      value_column = g.get("value_column", "fpkm_uq_unstranded")
      expr = []
      for d, f, p, s in zip(gene_dir.astype(str), gene_file.astype(str), table["patient_id"], slide):
        path = folder / d.strip() / f.strip()
        expr.append(self._expression(lambda path=path: genes_lib.read_gdc_star(path, value_column), p, s))
    else:
      allen = genes_lib.AllenExpression(folder)
      expr = [self._expression(lambda s=s: allen.for_slide(s), p, s) for p, s in zip(table["patient_id"], slide)]
    return table, expr, h5_paths


def _header_columns(raw: pd.DataFrame, overrides: Mapping[str, Any], needed: list[str], where: str) -> dict[str, Any]:
  """field -> header name of the label CSV (None: dropped); a needed field's absence is an error."""
  by_lower: dict[str, list[str]] = {}
  for name in raw.columns:
    by_lower.setdefault(str(name).strip().lower(), []).append(name)
  cols: dict[str, Any] = {}
  for field in needed:
    if field in overrides:
      cols[field] = overrides[field]
      if cols[field] is not None and cols[field] not in raw.columns:
        raise CohortError(
          f"label CSV {where}: no column {cols[field]!r} (set by columns.{field}); columns: {list(raw.columns)}"
        )
      continue
    found = [n for alias in HEADER_NAMES[field] for n in by_lower.get(alias, [])]
    if not found:
      raise CohortError(
        f"label CSV {where}: no column for field {field!r} (looked for headers "
        f"{list(HEADER_NAMES[field])}; columns: {list(raw.columns)}). Name it with "
        f"`columns: {{{field}: <header>}}`, drop it with `columns: {{{field}: null}}`, or use "
        "`columns: positional` for a header-less file"
      )
    if len(found) > 1:
      raise CohortError(
        f"label CSV {where}: columns {found} all name field {field!r}; pick one with `columns: {{{field}: <header>}}`"
      )
    cols[field] = found[0]
  return cols
