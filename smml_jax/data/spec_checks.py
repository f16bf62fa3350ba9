"""The checks of the cohort spec's values (the `check` of each `spec_fields.Field`).

Each check takes (value, key) and returns an error message saying what was expected, or None; a
bad key inside a nested mapping raises CohortError naming its dotted key.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

from smml_jax.data.errors import CohortError, did_you_mean

LABEL_FIELDS = ("idh", "codel", "cdkn2a", "grade", "histology")
# Label-CSV fields of the original layout (the header names looked for are in original_layout).
ORIGINAL_COLUMN_FIELDS = (
  "patient",
  "slide",
  "histology",
  "grade",
  "idh",
  "codel",
  "cdkn2a",
  "gene_dir",
  "gene_file",
  "vital_status",
  "survival_days",
)
OMICS = ("rnaseq", "cnv", "mut")
ORIENTATIONS = ("auto", "genes_by_samples", "samples_by_genes")


def choice(choices: Sequence[Any]) -> Callable[[Any, str], Optional[str]]:
  def check(value, key):
    if value in choices:
      return None
    return f"expected one of {list(choices)}, got {value!r}{did_you_mean(str(value), choices)}"

  return check


def integer(minimum: int) -> Callable[[Any, str], Optional[str]]:
  def check(value, key):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
      return f"expected an integer >= {minimum}, got {value!r}"
    return None

  return check


def number(value, key):
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return f"expected a number, got {value!r}"
  return None


def string(value, key):
  return None if isinstance(value, str) and value else f"expected a non-empty string, got {value!r}"


def optional_string(value, key):
  return None if value is None else string(value, key)


def list_of_names(value, key):
  if not isinstance(value, list) or not all(isinstance(v, (str, int)) for v in value):
    return f"expected a list of names, got {value!r}"
  return None


def omics(value, key):
  if not isinstance(value, list) or not value:
    return f"expected a non-empty list of {list(OMICS)}, got {value!r}"
  for v in value:
    if v not in OMICS:
      return f"{v!r} is not one of {list(OMICS)}{did_you_mean(str(v), OMICS)}"
  return None


def _keys(value: Mapping, key: str, allowed: Sequence[str]) -> None:
  for k in value:
    if k not in allowed:
      raise CohortError(f"{key}: unknown key {k!r}{did_you_mean(str(k), allowed)}; expected some of {list(allowed)}")


def _mapping(value, key) -> Optional[str]:
  return None if isinstance(value, Mapping) else f"expected a mapping, got {value!r}"


def signature(value, key):
  if msg := _mapping(value, key):
    return msg
  _keys(value, key, ("path", "sheet", "symbol_column", "type_column", "families", "tumour", "micro"))
  if "path" not in value and not ("tumour" in value and "micro" in value):
    return "expected a `path` (a signature table) or `tumour` and `micro`, each a list of genes or a gene-list file"
  if "path" not in value:
    for sub in ("tumour", "micro"):
      genes = value[sub]
      if not (isinstance(genes, str) and genes) and list_of_names(genes, sub) is not None:
        return f"{sub}: expected a list of gene symbols or a gene-list file (one symbol per line), got {genes!r}"
  if "families" in value:
    fams = value["families"]
    if not isinstance(fams, Mapping):
      return f"families: expected {{tumour: [...], micro: [...]}}, got {fams!r}"
    _keys(fams, f"{key}.families", ("tumour", "micro"))
  return None


def clam_labels(value, key):
  if msg := _mapping(value, key):
    return msg
  _keys(value, key, LABEL_FIELDS)
  for field, ref in value.items():
    where = f"{key}.{field}"
    if isinstance(ref, Mapping):
      _keys(ref, where, ("column", "map"))
      if "column" not in ref:
        raise CohortError(f"{where}: needs a `column` (the CSV column the field is read from)")
      mapping = ref.get("map")
      if mapping is not None and not isinstance(mapping, Mapping) and mapping != "oncotree":
        raise CohortError(
          f"{where}.map: expected a value -> label mapping or 'oncotree', got "
          f"{mapping!r}{did_you_mean(str(mapping), ['oncotree'])}"
        )
    elif not isinstance(ref, str):
      raise CohortError(f"{where}: expected a column name or {{column, map}}, got {ref!r}")
  return None


def expression(value, key):
  if msg := _mapping(value, key):
    return msg
  _keys(value, key, ("path", "orientation"))
  if "path" not in value:
    return "expected `path` (a genes x samples matrix: TSV, CSV or parquet)"
  if msg := string(value["path"], f"{key}.path"):
    return f"path: {msg}"
  if msg := choice(ORIENTATIONS)(value.get("orientation", "auto"), f"{key}.orientation"):
    return f"orientation: {msg}"
  return None


def original_columns(value, key):
  if value == "positional":
    return None
  if not isinstance(value, Mapping):
    return (
      f"expected 'positional' (a header-less CSV) or a mapping field -> header name, got "
      f"{value!r}{did_you_mean(str(value), ['positional'])}"
    )
  _keys(value, key, ORIGINAL_COLUMN_FIELDS)
  for field, name in value.items():
    if name is not None and not isinstance(name, str):
      raise CohortError(
        f"{key}.{field}: expected a header name (or null to drop the field), got "
        f"{name!r}; column positions need `columns: positional`"
      )
  return None


def cohorts(value, key):
  if not isinstance(value, list) or not value:
    return f"expected a non-empty list of cohorts, got {value!r}"
  for i, c in enumerate(value):
    where = f"{key}[{i}]"
    if not isinstance(c, Mapping):
      raise CohortError(f"{where}: expected a mapping, got {c!r}")
    _keys(c, where, ("name", "labels", "features", "genes", "columns"))
    for required in ("labels", "features", "genes"):
      if required not in c:
        raise CohortError(f"{where}: missing {required!r}")
    genes = c["genes"]
    if not isinstance(genes, Mapping):
      raise CohortError(f"{where}.genes: expected {{format, folder}}, got {genes!r}")
    _keys(genes, f"{where}.genes", ("format", "folder", "value_column"))
    if msg := choice(("gdc_star", "allen"))(genes.get("format"), f"{where}.genes.format"):
      raise CohortError(f"{where}.genes.format: {msg}")
    if "columns" in c and (msg := original_columns(c["columns"], f"{where}.columns")):
      raise CohortError(f"{where}.columns: {msg}")
  return None
