"""The cohort spec's fields, in one table: name, type, default, meaning, and the check of each.

`validate_spec(spec, where)` refuses an unknown key (with a did-you-mean) or a bad value before
anything is read or written; `reference_markdown()` renders the table as docs/cohort_spec.md
(tests/test_spec_validation.py keeps that file equal to it).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional, Sequence

from smml_jax.data.bags import GRID_LAYOUTS
from smml_jax.data.errors import CohortError, did_you_mean
from smml_jax.data.features import PATCH_DTYPES
from smml_jax.data.normalise import GENE_TRANSFORMS
from smml_jax.data.synthetic import SyntheticConfig

LAYOUTS = ("synthetic", "original", "clam", "trident")
LABEL_FIELDS = ("idh", "codel", "cdkn2a", "grade", "histology")
# Label-CSV fields of the original layout (the header names looked for are in original_layout).
ORIGINAL_COLUMN_FIELDS = ("patient", "slide", "histology", "grade", "idh", "codel", "cdkn2a",
                          "gene_dir", "gene_file", "vital_status", "survival_days")
ON_STALE = ("rebuild", "refuse")
OMICS = ("rnaseq", "cnv", "mut")
ORIENTATIONS = ("auto", "genes_by_samples", "samples_by_genes")


@dataclasses.dataclass(frozen=True)
class Field:
  """One spec key: where it applies, its type and default as documented, and its check.

  check(value, key) returns an error message (what was expected) or None.
  """
  name: str
  layouts: tuple[str, ...]
  type: str
  default: Any
  meaning: str
  check: Callable[[Any, str], Optional[str]]
  required: bool = False


def _choice(choices: Sequence[Any]) -> Callable[[Any, str], Optional[str]]:
  def check(value, key):
    if value in choices:
      return None
    return f"expected one of {list(choices)}, got {value!r}{did_you_mean(str(value), choices)}"
  return check


def _int(minimum: int) -> Callable[[Any, str], Optional[str]]:
  def check(value, key):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
      return f"expected an integer >= {minimum}, got {value!r}"
    return None
  return check


def _number(value, key):
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return f"expected a number, got {value!r}"
  return None


def _str(value, key):
  return None if isinstance(value, str) and value else f"expected a non-empty string, got {value!r}"


def _optional_str(value, key):
  return None if value is None else _str(value, key)


def _list_of_str(value, key):
  if not isinstance(value, list) or not all(isinstance(v, (str, int)) for v in value):
    return f"expected a list of names, got {value!r}"
  return None


def _omics(value, key):
  if not isinstance(value, list) or not value:
    return f"expected a non-empty list of {list(OMICS)}, got {value!r}"
  for v in value:
    if v not in OMICS:
      return f"{v!r} is not one of {list(OMICS)}{did_you_mean(str(v), OMICS)}"
  return None


def _keys(value: Mapping, key: str, allowed: Sequence[str]) -> None:
  for k in value:
    if k not in allowed:
      raise CohortError(f"{key}: unknown key {k!r}{did_you_mean(str(k), allowed)}; expected some "
                        f"of {list(allowed)}")


def _mapping(value, key) -> Optional[str]:
  return None if isinstance(value, Mapping) else f"expected a mapping, got {value!r}"


def _signature(value, key):
  if (msg := _mapping(value, key)):
    return msg
  _keys(value, key, ("path", "sheet", "symbol_column", "type_column", "families", "tumour",
                     "micro"))
  if "path" not in value and not ("tumour" in value and "micro" in value):
    return ("expected a `path` (a signature table) or `tumour` and `micro`, each a list of "
            "genes or a gene-list file")
  if "path" not in value:
    for sub in ("tumour", "micro"):
      genes = value[sub]
      if not (isinstance(genes, str) and genes) and _list_of_str(genes, sub) is not None:
        return (f"{sub}: expected a list of gene symbols or a gene-list file (one symbol per "
                f"line), got {genes!r}")
  if "families" in value:
    fams = value["families"]
    if not isinstance(fams, Mapping):
      return f"families: expected {{tumour: [...], micro: [...]}}, got {fams!r}"
    _keys(fams, f"{key}.families", ("tumour", "micro"))
  return None


def _clam_labels(value, key):
  if (msg := _mapping(value, key)):
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
        raise CohortError(f"{where}.map: expected a value -> label mapping or 'oncotree', got "
                          f"{mapping!r}{did_you_mean(str(mapping), ['oncotree'])}")
    elif not isinstance(ref, str):
      raise CohortError(f"{where}: expected a column name or {{column, map}}, got {ref!r}")
  return None


def _expression(value, key):
  if (msg := _mapping(value, key)):
    return msg
  _keys(value, key, ("path", "orientation"))
  if "path" not in value:
    return "expected `path` (a genes x samples matrix: TSV, CSV or parquet)"
  if (msg := _str(value["path"], f"{key}.path")):
    return f"path: {msg}"
  if (msg := _choice(ORIENTATIONS)(value.get("orientation", "auto"), f"{key}.orientation")):
    return f"orientation: {msg}"
  return None


def _original_columns(value, key):
  if value == "positional":
    return None
  if not isinstance(value, Mapping):
    return f"expected 'positional' (a header-less CSV) or a mapping field -> header name, got " \
           f"{value!r}{did_you_mean(str(value), ['positional'])}"
  _keys(value, key, ORIGINAL_COLUMN_FIELDS)
  for field, name in value.items():
    if name is not None and not isinstance(name, str):
      raise CohortError(f"{key}.{field}: expected a header name (or null to drop the field), got "
                        f"{name!r}; column positions need `columns: positional`")
  return None


def _cohorts(value, key):
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
    if (msg := _choice(("gdc_star", "allen"))(genes.get("format"), f"{where}.genes.format")):
      raise CohortError(f"{where}.genes.format: {msg}")
    if "columns" in c and (msg := _original_columns(c["columns"], f"{where}.columns")):
      raise CohortError(f"{where}.columns: {msg}")
  return None


_REAL = ("original", "clam", "trident")
_CLAM = ("clam", "trident")  # one CSV per cohort; trident differs only in where the .h5 files are
FIELDS: tuple[Field, ...] = (
    Field("layout", LAYOUTS, "str", None, "which reader: `synthetic`, `original`, `clam` or "
          "`trident` (docs/byo_data.md)", _choice(LAYOUTS), required=True),
    Field("root", _REAL, "path", "the spec's folder", "relative paths start here (itself "
          "relative to the spec's folder)", _str),
    Field("on_stale", _REAL, "str", "rebuild", "an input file changed, appeared or vanished "
          "since the records were built: `rebuild` them (saying which files) or `refuse`",
          _choice(ON_STALE)),
    Field("grid_side", _REAL, "int", "50 (original), 16 (clam, trident)", "patches per slide = "
          "grid_side ** 2 (docs/byo_data.md: choosing grid_side)", _int(1)),
    Field("feature_dim", _REAL, "int", "1024 (original), read from the files (clam, trident)",
          "patch feature dimension D; for clam / trident it is read from the .h5 files and, if "
          "given, must match them", _int(1)),
    Field("patch_dtype", _REAL, "str", "float16", "storage dtype of the patches (batches are "
          "float32)", _choice(tuple(PATCH_DTYPES))),
    Field("grid_layout", _REAL, "str", "sample", "`sample`: the original's tiling / even "
          "subsampling; `coords`: patches placed by slide position", _choice(GRID_LAYOUTS)),
    Field("feature_dataset", _REAL, "str", "Res_feature (original), features (clam, trident)",
          "HDF5 dataset of the patch features", _str),
    Field("coords_dataset", _REAL, "str | null", "null (original), coords (clam, trident)",
          "HDF5 dataset of the patch coordinates (needed by `grid_layout: coords`; its "
          "`patch_size_level0` attribute, written by TRIDENT, sets the patch stride)",
          _optional_str),
    Field("missing_genes", _REAL, "str", "drop", "a signature gene absent from some source: "
          "`drop` it everywhere (listed in the cohort info) or `error`",
          _choice(("drop", "error"))),
    Field("missing_expression", _REAL, "str", "error", "a patient without expression (no "
          "expression file or specimen, or all its genomic columns empty): `error` naming the "
          "patients, or `allow` (loaded with has_expression False, trained on histology alone; "
          "counted in the build log and the cohort info)", _choice(("error", "allow"))),
    Field("signature", _REAL, "mapping", None,
          "which genes form the two subspaces, in order: `{path, sheet, symbol_column, "
          "type_column}` (Type = Tumor / Immune), `{path, "
          "families: {tumour: [...], micro: [...]}}`, or `{tumour, micro}` each an inline list "
          "or a gene-list file (one symbol per line)",
          _signature, required=True),
    Field("cohorts", ("original",), "list", None, "per cohort: `name`, `labels` (label CSV), "
          "`features` (folder of `<slide>.h5`), `genes: {format: gdc_star | allen, folder, "
          "value_column}`, `columns` (label-CSV header names per field, or `positional`)",
          _cohorts, required=True),
    Field("csv", _CLAM, "path", None, "one row per slide: case_id, slide_id, "
          "survival_months, censorship, labels, `<GENE>_<omic>` columns (unless `expression`)",
          _str, required=True),
    Field("features", ("clam",), "path", None, "CLAM's output folder holding `h5_files/`, or a "
          "folder of `<slide_id>.h5` (features (N, D), coords (N, 2))", _str, required=True),
    Field("features", ("trident",), "path", None, "a TRIDENT job folder (holding "
          "`<mag>x_<ps>px_<ov>px_overlap/features_<encoder>/<slide>.h5`) or a `features_<encoder>` "
          "folder", _str, required=True),
    Field("encoder", ("trident",), "str", "the only one", "the patch encoder, as in the "
          "`features_<encoder>` folder name (e.g. uni_v2, conch_v15); needed when the job holds "
          "several", _str),
    Field("patching", ("trident",), "str", "the only one", "the `<mag>x_<ps>px_<ov>px_overlap` "
          "folder; needed when the job holds several", _str),
    Field("slides", _CLAM, "list | null", "null (all)", "only these slide ids",
          lambda v, k: None if v is None else _list_of_str(v, k)),
    Field("missing_features", _CLAM, "str", "error", "a slide without an .h5 file: "
          "`error` or `skip` it", _choice(("error", "skip"))),
    Field("expression", _CLAM, "mapping", "null (the CSV's columns)", "`{path, orientation}`: a "
          "genes x samples matrix (TSV, CSV or parquet; genes as rows, case ids as columns) "
          "joined on case_id; `orientation`: auto (by where the case ids are), genes_by_samples "
          "or samples_by_genes. A case without expression is an error listing them",
          _expression),
    Field("omics", _CLAM, "list", "[rnaseq]", f"which `<GENE>_<omic>` columns form each gene "
          f"(of {list(OMICS)}; not with `expression`)", _omics),
    Field("gene_transform", _CLAM, "str", "zscore", "the cohort's default gene "
          "normalisation", _choice(GENE_TRANSFORMS)),
    Field("labels", _CLAM, "mapping", "{} (all missing)", f"field ({', '.join(LABEL_FIELDS)})"
          " -> column name, or `{column, map}` with `map` a value -> label mapping or `oncotree`",
          _clam_labels),
)

_SYNTHETIC_MEANING = {
    "n_patients": "patients generated", "second_slide_fraction": "patients with a second slide",
    "grid_side": "patches per slide = grid_side ** 2", "feature_dim": "patch feature dimension",
    "n_genes_tumour": "tumour-subspace genes", "n_genes_micro": "microenvironment genes",
    "seed": "the one seed of the generator", "patch_dtype": "storage dtype of the patches",
    "patch_noise": "per-dimension patch noise", "anaplasia_scale": "grade cue in tumour patches",
    "morphology_scale": "co-deletion / IDH cues in tumour patches",
    "immune_scale": "immune-region cue", "gene_noise": "gene log-noise",
}


def _synthetic_fields() -> tuple[Field, ...]:
  out = []
  for f in dataclasses.fields(SyntheticConfig):
    if f.name == "patch_dtype":
      check = _choice(tuple(PATCH_DTYPES))
    elif f.type in ("int", int):
      check = _int(1) if f.name != "seed" else _int(0)
    else:
      check = _number
    out.append(Field(f.name, ("synthetic",), str(f.type), f.default,
                     _SYNTHETIC_MEANING.get(f.name, ""), check))
  return tuple(out)


def fields_of(layout: str) -> dict[str, Field]:
  every = FIELDS + _synthetic_fields()
  return {f.name: f for f in every if layout in f.layouts}


def _check_combinations(spec: Mapping[str, Any], where: str) -> None:
  if "expression" in spec and "omics" in spec:
    raise CohortError(f"{where}: `omics` selects the CSV's `<GENE>_<omic>` columns, but "
                      "`expression` reads genes from a matrix; give one of them")


def validate_spec(spec: Mapping[str, Any], where: str = "cohort spec") -> None:
  """Raises CohortError on an unknown key, a missing required key or a bad value."""
  layout = spec.get("layout")
  if layout not in LAYOUTS:
    raise CohortError(f"{where}: `layout` is {layout!r}; expected one of {list(LAYOUTS)}"
                      f"{did_you_mean(str(layout), LAYOUTS)}")
  fields = fields_of(layout)
  unknown = [key for key in spec if key not in fields]
  if unknown:
    notes = []
    for key in unknown:
      others = [lay for lay in LAYOUTS if key in fields_of(lay)]
      notes.append(did_you_mean(str(key), fields, f"{key!r}: did you mean {{!r}}?") or
                   (f"{key!r} is a field of the {others[0]} layout"
                    + (f" (and of {', '.join(others[1:])})" if others[1:] else "")
                    if others else ""))
    notes = "; ".join(n for n in notes if n)
    raise CohortError(f"{where}: unknown options {unknown} for layout {layout!r}"
                      f"{f' ({notes})' if notes else ''}; expected some of {sorted(fields)} "
                      "(see docs/cohort_spec.md)")
  for name, field in fields.items():
    if name not in spec:
      if field.required:
        raise CohortError(f"{where}: layout {layout!r} needs `{name}` ({field.meaning})")
      continue
    try:
      msg = field.check(spec[name], name)
    except CohortError as e:  # a nested key: name the spec file too
      raise CohortError(f"{where}: {e}") from None
    if msg:
      raise CohortError(f"{where}: `{name}`: {msg}")
  _check_combinations(spec, where)


def reference_markdown() -> str:
  """The field reference as a Markdown page (docs/cohort_spec.md)."""
  lines = ["# Cohort spec reference", "",
           "Generated from `smml_jax/data/spec_fields.py` (the table the spec is validated "
           "against; `tests/test_spec_validation.py` keeps this page equal to it). An unknown key "
           "or a bad value is an error naming it, before anything is read or written.", ""]
  for layout in LAYOUTS:
    lines += [f"## `layout: {layout}`", "", "| field | type | default | meaning |",
              "|---|---|---|---|"]
    for f in fields_of(layout).values():
      if f.required:
        default = "required"
      elif isinstance(f.default, str) and " " in f.default:
        default = f.default
      else:
        default = "" if f.default is None else f"`{f.default}`"
      cells = (f"`{f.name}`", f.type, default, f.meaning)
      lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines.append("")
  return "\n".join(lines)
