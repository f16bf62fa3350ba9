"""The cohort spec's fields, in one table: name, type, default, meaning, and the check of each.

`validate_spec(spec, where)` refuses an unknown key (with a did-you-mean) or a bad value before
anything is read or written; `reference_markdown()` renders the table as docs/cohort_spec.md
(tests/test_spec_validation.py keeps that file equal to it).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

from smml_jax.data import spec_checks as checks
from smml_jax.data.bags import GRID_LAYOUTS
from smml_jax.data.errors import CohortError, did_you_mean
from smml_jax.data.features import PATCH_DTYPES
from smml_jax.data.normalise import GENE_TRANSFORMS
from smml_jax.data.spec_checks import LABEL_FIELDS, OMICS
from smml_jax.data.synthetic import SyntheticConfig

LAYOUTS = ("synthetic", "original", "clam", "trident")
ON_STALE = ("rebuild", "refuse")


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


_REAL = ("original", "clam", "trident")
_CLAM = ("clam", "trident")  # one CSV per cohort; trident differs only in where the .h5 files are
FIELDS: tuple[Field, ...] = (
  Field(
    "layout",
    LAYOUTS,
    "str",
    None,
    "which reader: `synthetic`, `original`, `clam` or `trident` (docs/byo_data.md)",
    checks.choice(LAYOUTS),
    required=True,
  ),
  Field(
    "root",
    _REAL,
    "path",
    "the spec's folder",
    "relative paths start here (itself relative to the spec's folder)",
    checks.string,
  ),
  Field(
    "on_stale",
    _REAL,
    "str",
    "rebuild",
    "an input file changed, appeared or vanished "
    "since the records were built: `rebuild` them (saying which files) or `refuse`",
    checks.choice(ON_STALE),
  ),
  Field(
    "grid_side",
    _REAL,
    "int",
    "50 (original), 16 (clam, trident)",
    "patches per slide = grid_side ** 2 (docs/byo_data.md: choosing grid_side)",
    checks.integer(1),
  ),
  Field(
    "feature_dim",
    _REAL,
    "int",
    "1024 (original), read from the files (clam, trident)",
    "patch feature dimension D; for clam / trident it is read from the .h5 files and, if given, must match them",
    checks.integer(1),
  ),
  Field(
    "patch_dtype",
    _REAL,
    "str",
    "float16",
    "storage dtype of the patches (batches are float32)",
    checks.choice(tuple(PATCH_DTYPES)),
  ),
  Field(
    "grid_layout",
    _REAL,
    "str",
    "sample",
    "`sample`: the original's tiling / even subsampling; `coords`: patches placed by slide position",
    checks.choice(GRID_LAYOUTS),
  ),
  Field(
    "feature_dataset",
    _REAL,
    "str",
    "Res_feature (original), features (clam, trident)",
    "HDF5 dataset of the patch features",
    checks.string,
  ),
  Field(
    "coords_dataset",
    _REAL,
    "str | null",
    "null (original), coords (clam, trident)",
    "HDF5 dataset of the patch coordinates (needed by `grid_layout: coords`; its "
    "`patch_size_level0` attribute, written by TRIDENT, sets the patch stride)",
    checks.optional_string,
  ),
  Field(
    "missing_genes",
    _REAL,
    "str",
    "drop",
    "a signature gene absent from some source: `drop` it everywhere (listed in the cohort info) or `error`",
    checks.choice(("drop", "error")),
  ),
  Field(
    "missing_expression",
    _REAL,
    "str",
    "error",
    "a patient without expression (no "
    "expression file or specimen, or all its genomic columns empty): `error` naming the "
    "patients, or `allow` (loaded with has_expression False, trained on histology alone; "
    "counted in the build log and the cohort info)",
    checks.choice(("error", "allow")),
  ),
  Field(
    "signature",
    _REAL,
    "mapping",
    None,
    "which genes form the two subspaces, in order: `{path, sheet, symbol_column, "
    "type_column}` (Type = Tumor / Immune), `{path, "
    "families: {tumour: [...], micro: [...]}}`, or `{tumour, micro}` each an inline list "
    "or a gene-list file (one symbol per line)",
    checks.signature,
    required=True,
  ),
  Field(
    "cohorts",
    ("original",),
    "list",
    None,
    "per cohort: `name`, `labels` (label CSV), "
    "`features` (folder of `<slide>.h5`), `genes: {format: gdc_star | allen, folder, "
    "value_column}`, `columns` (label-CSV header names per field, or `positional`)",
    checks.cohorts,
    required=True,
  ),
  Field(
    "csv",
    _CLAM,
    "path",
    None,
    "one row per slide: case_id, slide_id, "
    "survival_months, censorship, labels, `<GENE>_<omic>` columns (unless `expression`)",
    checks.string,
    required=True,
  ),
  Field(
    "features",
    ("clam",),
    "path",
    None,
    "CLAM's output folder holding `h5_files/`, or a folder of `<slide_id>.h5` (features (N, D), coords (N, 2))",
    checks.string,
    required=True,
  ),
  Field(
    "features",
    ("trident",),
    "path",
    None,
    "a TRIDENT job folder (holding "
    "`<mag>x_<ps>px_<ov>px_overlap/features_<encoder>/<slide>.h5`) or a `features_<encoder>` "
    "folder",
    checks.string,
    required=True,
  ),
  Field(
    "encoder",
    ("trident",),
    "str",
    "the only one",
    "the patch encoder, as in the "
    "`features_<encoder>` folder name (e.g. uni_v2, conch_v15); needed when the job holds "
    "several",
    checks.string,
  ),
  Field(
    "patching",
    ("trident",),
    "str",
    "the only one",
    "the `<mag>x_<ps>px_<ov>px_overlap` folder; needed when the job holds several",
    checks.string,
  ),
  Field(
    "slides",
    _CLAM,
    "list | null",
    "null (all)",
    "only these slide ids",
    lambda v, k: None if v is None else checks.list_of_names(v, k),
  ),
  Field(
    "missing_features",
    _CLAM,
    "str",
    "error",
    "a slide without an .h5 file: `error` or `skip` it",
    checks.choice(("error", "skip")),
  ),
  Field(
    "expression",
    _CLAM,
    "mapping",
    "null (the CSV's columns)",
    "`{path, orientation}`: a "
    "genes x samples matrix (TSV, CSV or parquet; genes as rows, case ids as columns) "
    "joined on case_id; `orientation`: auto (by where the case ids are), genes_by_samples "
    "or samples_by_genes. A case without expression is an error listing them",
    checks.expression,
  ),
  Field(
    "omics",
    _CLAM,
    "list",
    "[rnaseq]",
    f"which `<GENE>_<omic>` columns form each gene (of {list(OMICS)}; not with `expression`)",
    checks.omics,
  ),
  Field(
    "gene_transform", _CLAM, "str", "zscore", "the cohort's default gene normalisation", checks.choice(GENE_TRANSFORMS)
  ),
  Field(
    "labels",
    _CLAM,
    "mapping",
    "{} (all missing)",
    f"field ({', '.join(LABEL_FIELDS)})"
    " -> column name, or `{column, map}` with `map` a value -> label mapping or `oncotree`",
    checks.clam_labels,
  ),
)

_SYNTHETIC_MEANING = {
  "n_patients": "patients generated",
  "second_slide_fraction": "patients with a second slide",
  "grid_side": "patches per slide = grid_side ** 2",
  "feature_dim": "patch feature dimension",
  "n_genes_tumour": "tumour-subspace genes",
  "n_genes_micro": "microenvironment genes",
  "seed": "the one seed of the generator",
  "patch_dtype": "storage dtype of the patches",
  "patch_noise": "per-dimension patch noise",
  "anaplasia_scale": "grade cue in tumour patches",
  "morphology_scale": "co-deletion / IDH cues in tumour patches",
  "immune_scale": "immune-region cue",
  "gene_noise": "gene log-noise",
}


def _synthetic_fields() -> tuple[Field, ...]:
  out = []
  for f in dataclasses.fields(SyntheticConfig):
    if f.name == "patch_dtype":
      check = checks.choice(tuple(PATCH_DTYPES))
    elif f.type in ("int", int):
      check = checks.integer(1) if f.name != "seed" else checks.integer(0)
    else:
      check = checks.number
    out.append(Field(f.name, ("synthetic",), str(f.type), f.default, _SYNTHETIC_MEANING.get(f.name, ""), check))
  return tuple(out)


def fields_of(layout: str) -> dict[str, Field]:
  every = FIELDS + _synthetic_fields()
  return {f.name: f for f in every if layout in f.layouts}


def _check_combinations(spec: Mapping[str, Any], where: str) -> None:
  if "expression" in spec and "omics" in spec:
    raise CohortError(
      f"{where}: `omics` selects the CSV's `<GENE>_<omic>` columns, but "
      "`expression` reads genes from a matrix; give one of them"
    )


def validate_spec(spec: Mapping[str, Any], where: str = "cohort spec") -> None:
  """Raises CohortError on an unknown key, a missing required key or a bad value."""
  layout = spec.get("layout")
  if layout not in LAYOUTS:
    raise CohortError(
      f"{where}: `layout` is {layout!r}; expected one of {list(LAYOUTS)}{did_you_mean(str(layout), LAYOUTS)}"
    )
  fields = fields_of(layout)
  unknown = [key for key in spec if key not in fields]
  if unknown:
    notes = []
    for key in unknown:
      others = [lay for lay in LAYOUTS if key in fields_of(lay)]
      notes.append(
        did_you_mean(str(key), fields, f"{key!r}: did you mean {{!r}}?")
        or (
          f"{key!r} is a field of the {others[0]} layout" + (f" (and of {', '.join(others[1:])})" if others[1:] else "")
          if others
          else ""
        )
      )
    notes = "; ".join(n for n in notes if n)
    raise CohortError(
      f"{where}: unknown options {unknown} for layout {layout!r}"
      f"{f' ({notes})' if notes else ''}; expected some of {sorted(fields)} "
      "(see docs/cohort_spec.md)"
    )
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
  lines = [
    "# Cohort spec reference",
    "",
    "Generated from `smml_jax/data/spec_fields.py` (the table the spec is validated "
    "against; `tests/test_spec_validation.py` keeps this page equal to it). An unknown key "
    "or a bad value is an error naming it, before anything is read or written.",
    "",
  ]
  for layout in LAYOUTS:
    lines += [f"## `layout: {layout}`", "", "| field | type | default | meaning |", "|---|---|---|---|"]
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
