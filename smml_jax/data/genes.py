"""Gene signatures (which genes form the tumour / micro subspaces) and expression readers.

Policy, identical for every cohort:
  * Order: genes follow the signature table's order within each subspace (never a file's order).
  * Duplicates in the signature: a symbol listed twice in one subspace is kept once (first
    position); a symbol listed as both Tumor and Immune is kept in both subspaces.
  * Duplicates in an expression source (e.g. GDC STAR rows sharing a `gene_name`, Allen rows
    sharing a `gene_symbol`): the first row wins, as in the original.
  * Missing genes: signature genes absent from any source of the cohort are dropped from that
    subspace for ALL cohorts (so the subspaces stay aligned) and listed in the cohort's info
    (`missing_genes`); `missing_genes: error` in the spec raises instead. A subspace left empty,
    i.e. a signature matching no gene, is an error.
"""

from __future__ import annotations

import os
import pathlib
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from smml_jax.data.errors import CohortError

TYPE_TO_SUBSPACE = {
  "tumor": "tumour",
  "tumour": "tumour",
  "immune": "micro",
  "micro": "micro",
  "microenvironment": "micro",
  "stromal": "micro",
}


def _require_file(path: str | os.PathLike, what: str) -> pathlib.Path:
  path = pathlib.Path(path)
  if not path.is_file():
    raise CohortError(f"{what} {path} does not exist")
  return path


def read_table(path: str | os.PathLike, what: str, sheet: str | int | None = None, **kwargs) -> pd.DataFrame:
  """CSV / TSV / XLSX (or a zipped CSV) as a DataFrame."""
  path = _require_file(path, what)
  suffixes = "".join(path.suffixes).lower()
  try:
    if suffixes.endswith((".xlsx", ".xls")):
      return pd.read_excel(path, sheet_name=0 if sheet is None else sheet, **kwargs)
    sep = "\t" if suffixes.endswith((".tsv", ".txt", ".tsv.gz")) else ","
    return pd.read_csv(path, sep=sep, **kwargs)
  except CohortError:
    raise
  except Exception as e:  # pandas' parse errors do not always name the file
    raise CohortError(f"cannot read {what} {path}: {e}") from e


def _dedupe(symbols: Sequence[str]) -> list[str]:
  return list(dict.fromkeys(s for s in symbols))


def read_type_signature(
  path: str | os.PathLike, sheet: str | int | None = None, symbol_column: str = "gene_symbol", type_column: str = "Type"
) -> dict[str, list[str]]:
  """A (gene symbol, Type = Tumor | Immune) table -> {'tumour': [...], 'micro': [...]}."""
  table = read_table(path, "gene signature", sheet)
  for col in (symbol_column, type_column):
    if col not in table.columns:
      raise CohortError(
        f"gene signature {path}: no column {col!r} (columns: "
        f"{list(table.columns)}); expected {symbol_column!r} and {type_column!r}"
      )
  out: dict[str, list[str]] = {"tumour": [], "micro": []}
  for row, (sym, typ) in enumerate(zip(table[symbol_column], table[type_column])):
    if pd.isna(sym):
      continue
    key = TYPE_TO_SUBSPACE.get(str(typ).strip().lower())
    if key is None:
      raise CohortError(f"gene signature {path}, row {row + 2}: Type {typ!r} is not one of Tumor / Immune")
    out[key].append(str(sym).strip())
  return {k: _dedupe(v) for k, v in out.items()}


def read_family_signature(path: str | os.PathLike, subspaces: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
  """An MCAT-style table (one column per gene family, NaN-padded) -> subspaces by family names."""
  table = read_table(path, "gene signature")
  out = {}
  for key in ("tumour", "micro"):
    families = subspaces.get(key)
    if not families:
      raise CohortError(f"gene signature {path}: no families given for subspace {key!r}")
    symbols: list[str] = []
    for fam in families:
      if fam not in table.columns:
        raise CohortError(f"gene signature {path}: no family column {fam!r} (columns: {list(table.columns)})")
      symbols += [str(s).strip() for s in table[fam].dropna()]
    out[key] = _dedupe(symbols)
  return out


def read_gene_list(path: str | os.PathLike) -> list[str]:
  """A gene-list file: one symbol per line (blank lines and `#` comments skipped)."""
  path = _require_file(path, "gene list")
  try:
    lines = path.read_text().splitlines()
  except (OSError, UnicodeDecodeError) as e:
    raise CohortError(f"cannot read gene list {path}: {e}") from e
  genes = [line.split("#", 1)[0].strip() for line in lines]
  bad = [g for g in genes if any(c in g for c in ",\t ")]
  if bad:
    raise CohortError(
      f"gene list {path}: {bad[0]!r} is not one symbol; expected one gene per line (a table goes in `signature.path`)"
    )
  genes = [g for g in genes if g]
  if not genes:
    raise CohortError(f"gene list {path} lists no gene; expected one symbol per line")
  return _dedupe(genes)


def resolve_signature_paths(spec: Mapping, root: pathlib.Path) -> tuple[dict, list[pathlib.Path]]:
  """The `signature` entry with its file paths made absolute (from `root`), and those files."""
  out, files = dict(spec), []
  for key in ("path", "tumour", "micro"):
    if isinstance(out.get(key), (str, os.PathLike)):
      path = pathlib.Path(os.path.expanduser(str(out[key])))
      out[key] = path if path.is_absolute() else root / path
      files.append(out[key])
  return out, files


def read_signature(spec: Mapping) -> dict[str, list[str]]:
  """The `signature` entry of a cohort spec.

  Either {path, [sheet], [symbol_column], [type_column]} for a Type table, or {path, families:
  {tumour: [...], micro: [...]}} for a family table, or {tumour: ..., micro: ...} where each is
  an inline list or a gene-list file (one symbol per line).
  """
  if "path" not in spec:
    if "tumour" in spec and "micro" in spec:
      return {
        k: (read_gene_list(spec[k]) if isinstance(spec[k], (str, os.PathLike)) else _dedupe(str(s) for s in spec[k]))
        for k in ("tumour", "micro")
      }
    raise CohortError("signature needs a `path` (or inline `tumour` and `micro` lists)")
  if "families" in spec:
    return read_family_signature(spec["path"], spec["families"])
  return read_type_signature(
    spec["path"], spec.get("sheet"), spec.get("symbol_column", "gene_symbol"), spec.get("type_column", "Type")
  )


def resolve_genes(
  signature: Mapping[str, Sequence[str]], available: Sequence[set[str]], where: str, missing: str = "drop"
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
  """Keeps the signature genes present in every source, in signature order.

  Returns (genes per subspace, dropped genes per subspace).
  """
  if missing not in ("drop", "error"):
    raise CohortError(f"missing_genes must be 'drop' or 'error', got {missing!r}")
  common = set.intersection(*map(set, available)) if available else set()
  kept, dropped = {}, {}
  for key in ("tumour", "micro"):
    kept[key] = [g for g in signature[key] if g in common]
    dropped[key] = [g for g in signature[key] if g not in common]
    if not kept[key]:
      raise CohortError(
        f"{where}: the {key} gene signature ({len(signature[key])} genes, e.g. "
        f"{list(signature[key])[:3]}) matches no gene of the expression data"
      )
    if dropped[key] and missing == "error":
      raise CohortError(
        f"{where}: {len(dropped[key])} {key} signature genes are missing from the "
        f"expression data, e.g. {dropped[key][:5]}"
      )
  return kept, dropped


def read_gdc_star(path: str | os.PathLike, value_column: str = "fpkm_uq_unstranded") -> pd.Series:
  """GDC STAR 'augmented gene counts' TSV -> expression by gene_name (first duplicate wins)."""
  path = _require_file(path, "gene expression file")
  try:
    table = pd.read_csv(path, sep="\t", skiprows=1)
  except Exception as e:
    raise CohortError(f"cannot read gene expression file {path}: {e}") from e
  for col in ("gene_name", value_column):
    if col not in table.columns:
      raise CohortError(
        f"gene expression file {path}: no column {col!r}; expected a GDC STAR "
        "TSV (one comment line, then gene_id, gene_name, ..., "
        f"{value_column})"
      )
  table = table.dropna(subset=["gene_name"]).drop_duplicates(subset=["gene_name"], keep="first")
  values = pd.to_numeric(table[value_column], errors="coerce")
  return pd.Series(values.to_numpy(np.float64), index=table["gene_name"].astype(str).to_numpy())


ALLEN_FILES = ("rows-genes.csv", "columns-samples.csv", "fpkm_table.csv")


class AllenExpression:
  """IvYGAP tables: rows-genes.csv, columns-samples.csv, fpkm_table.csv in one folder."""

  def __init__(self, folder: str | os.PathLike):
    folder = pathlib.Path(folder)
    rows = read_table(folder / "rows-genes.csv", "IvYGAP gene table")
    samples = read_table(folder / "columns-samples.csv", "IvYGAP sample table")
    fpkm = read_table(folder / "fpkm_table.csv", "IvYGAP FPKM table")
    for name, table, cols in (
      ("rows-genes.csv", rows, ("gene_id", "gene_symbol")),
      ("columns-samples.csv", samples, ("rna_well_id", "specimen_name")),
    ):
      missing = [c for c in cols if c not in table.columns]
      if missing:
        raise CohortError(f"{folder / name}: no columns {missing}; expected {list(cols)}")
    rows = rows.drop_duplicates(subset=["gene_symbol"], keep="first")
    fpkm = fpkm.set_index(fpkm.columns[0])  # 'gene_id\\rna_well_id'
    fpkm.index = fpkm.index.astype(str)
    symbol_of = dict(zip(rows["gene_id"].astype(str), rows["gene_symbol"].astype(str)))
    fpkm = fpkm[fpkm.index.isin(symbol_of)]
    fpkm.index = [symbol_of[i] for i in fpkm.index]
    self.folder = folder
    self.table = fpkm[~fpkm.index.duplicated(keep="first")]
    self.table.columns = self.table.columns.astype(str)
    keys = samples["specimen_name"].astype(str).map(lambda s: "-".join(s.split("-")[:3]))
    self.well_of = dict(zip(keys, samples["rna_well_id"].astype(str)))  # first 3 parts -> well
    self.genes = set(self.table.index)

  def for_slide(self, slide_id: str) -> pd.Series:
    key = "-".join(str(slide_id).split("-")[:3])
    if key not in self.well_of:
      raise CohortError(
        f"{self.folder / 'columns-samples.csv'}: no specimen matches slide "
        f"{slide_id!r} (expected a specimen_name starting {key!r})"
      )
    well = self.well_of[key]
    if well not in self.table.columns:
      raise CohortError(f"{self.folder / 'fpkm_table.csv'}: no column for rna_well_id {well} (slide {slide_id!r})")
    return self.table[well].astype(np.float64)


def gene_matrix(series: Sequence[pd.Series], genes: Sequence[str]) -> np.ndarray:
  """(n, G) float32 from per-slide expression series, columns in `genes` order."""
  if not series:
    return np.zeros((0, len(genes)), np.float32)
  return np.stack([s.reindex(list(genes)).to_numpy(np.float64) for s in series]).astype(np.float32)
