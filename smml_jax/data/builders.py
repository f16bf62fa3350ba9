"""Shared tfds machinery: one GeneratorBasedBuilder for every cohort layout.

A layout supplies a `CohortSource`: a JSON-able fingerprint of its spec (hashed, together with the
record format version, into the builder config name, so a changed spec rebuilds and the same spec
reuses the records), the list of its input files (stamped into the sidecar; a changed, added or
deleted file makes the records stale, see `build`) and `prepare()`, which validates the inputs
and returns a `PreparedCohort` (slide
table, raw gene matrices, shapes and a per-slide reader for the patch features). The builder writes
`array_record` files plus sidecars `smml_cohort.json` (table, gene names) and
`smml_genes.npz` (raw gene matrices, so normalisation is fitted without reading the patches);
reading back uses
`tfds.builder_from_directory(...).as_data_source()`, so TensorFlow is never imported.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
import pathlib
import shutil
import sys
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np
import pandas as pd
import tensorflow_datasets as tfds
from etils import epath

from smml_jax.data import features as features_lib
from smml_jax.data import fingerprint as fingerprint_lib
from smml_jax.data.errors import CohortError

log = logging.getLogger(__name__)

RECORD_FORMAT_VERSION = "1.0.0"
SPLIT_NAME = "cohort"
SIDECAR = "smml_cohort.json"
GENES_SIDECAR = "smml_genes.npz"


@dataclasses.dataclass
class PreparedCohort:
  """A validated cohort, ready to be written.

  table: one row per slide, columns `features.TABLE_COLUMNS` (string ids, int labels, surv_time
    in days, -1 = missing), in record order.
  genes_tumour, genes_micro: (n_slides, Gt) / (n_slides, Gm) float32 raw expression.
  read_slide: index -> dict with `patches` (S*S, D), `coords` (S*S, 2), `tissue_mask` (S*S,) and
    any `extra_masks`; it raises CohortError on bad files.
  """

  table: pd.DataFrame
  genes_tumour: np.ndarray
  genes_micro: np.ndarray
  gene_names: dict[str, list[str]]
  grid_side: int
  feature_dim: int
  read_slide: Callable[[int], Mapping[str, np.ndarray]]
  patch_dtype: str = "float16"
  extra_masks: tuple[str, ...] = ()
  gene_transform: str = "log1p_zscore"  # the cohort's default normalisation
  info: dict[str, Any] = dataclasses.field(default_factory=dict)


class CohortSource(Protocol):
  layout: str

  def fingerprint(self) -> dict[str, Any]:
    """JSON-able identity of the cohort (its spec); names the records folder."""

  def input_files(self) -> Sequence[os.PathLike]:
    """Every file the records are built from; their stamps decide whether records are stale."""

  def prepare(self) -> PreparedCohort:
    """Validate the inputs and load the cheap parts (tables, genes)."""


def config_name(source: CohortSource) -> str:
  payload = json.dumps(
    {"format": RECORD_FORMAT_VERSION, "layout": source.layout, "source": source.fingerprint()},
    sort_keys=True,
    default=str,
  )
  return f"{source.layout}_{hashlib.sha256(payload.encode()).hexdigest()[:16]}"


def default_data_dir() -> str:
  """$SMML_DATA_DIR, else ~/.cache/smml_jax/tfds (XDG_CACHE_HOME respected)."""
  if os.environ.get("SMML_DATA_DIR"):
    return os.environ["SMML_DATA_DIR"]
  cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(cache, "smml_jax", "tfds")


def _check_array(name: str, value: np.ndarray, shape: tuple[int, ...], where: str) -> np.ndarray:
  value = np.asarray(value)
  if value.shape != shape:
    raise CohortError(f"{where}: field {name!r} has shape {value.shape}, expected {shape}")
  if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
    bad = int(np.sum(~np.isfinite(value)))
    raise CohortError(f"{where}: field {name!r} has {bad} NaN/inf values; expected finite numbers")
  return value


class _LocalDatasetInfo(tfds.core.DatasetInfo):
  """A cohort's DatasetInfo. A cohort is never on tfds' GCS bucket, so the bucket lookup of a new
  dataset is skipped: it would leave an empty mkdtemp() folder behind per build (/tmp/tmp*tfds)."""

  def initialize_from_bucket(self) -> None:
    return None


class SmmlCohort(tfds.core.GeneratorBasedBuilder):
  """Writes one cohort (all slides, in table order) as the single split `cohort`."""

  VERSION = tfds.core.Version(RECORD_FORMAT_VERSION)

  # tfds looks for checksums next to the builder's code, and its default lookup needs the
  # optional `importlib_resources` package for namespace / editable installs; this builder
  # downloads nothing, so point it at this file directly.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(__file__)

  def __init__(self, *, prepared: PreparedCohort, meta: Mapping[str, Any], **kwargs):
    self._prepared = prepared
    self._meta = dict(meta)
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    p = self._prepared
    return _LocalDatasetInfo(
      builder=self,
      description=f"smml-jax cohort ({self._meta.get('layout')}), one example per slide",
      features=features_lib.features_dict(
        p.grid_side, p.feature_dim, p.genes_tumour.shape[1], p.genes_micro.shape[1], p.patch_dtype, p.extra_masks
      ),
      disable_shuffling=True,
    )  # record index = table row

  def _split_generators(self, dl_manager):
    del dl_manager
    # self.data_dir is the incomplete (temporary) dir here; tfds renames it when done, so the
    # sidecar appears atomically with the records.
    with open(os.path.join(self.data_dir, SIDECAR), "w") as f:
      json.dump(self._meta, f)
    np.savez(
      os.path.join(self.data_dir, GENES_SIDECAR), tumour=self._prepared.genes_tumour, micro=self._prepared.genes_micro
    )
    return {SPLIT_NAME: self._generate_examples()}

  def _generate_examples(self):
    p = self._prepared
    n = p.grid_side * p.grid_side
    for i, row in enumerate(p.table.itertuples(index=False)):
      row = row._asdict()
      where = f"slide {row['slide_id']!r} (row {i})"
      slide = p.read_slide(i)
      example: dict[str, Any] = {
        "patches": _check_array("patches", slide["patches"], (n, p.feature_dim), where).astype(
          features_lib.PATCH_DTYPES[p.patch_dtype]
        ),
        "coords": _check_array("coords", slide["coords"], (n, 2), where).astype(np.float32),
        "tissue_mask": _check_array("tissue_mask", slide["tissue_mask"], (n,), where),
        "genes_tumour": p.genes_tumour[i].astype(np.float32),
        "genes_micro": p.genes_micro[i].astype(np.float32),
        "surv_bin": -1,
      }
      for name in p.extra_masks:
        example[name] = _check_array(name, slide[name], (n,), where).astype(np.bool_)
      for name in features_lib.TABLE_COLUMNS:
        value = row[name]
        example[name] = str(value) if name in features_lib.TEXT_FIELDS else value
      yield i, example


def _meta_of(source: CohortSource, prepared: PreparedCohort, inputs: Mapping[str, Any]) -> dict[str, Any]:
  table = prepared.table
  return {
    "layout": source.layout,
    "fingerprint": source.fingerprint(),
    "inputs": dict(inputs),
    "grid_side": prepared.grid_side,
    "feature_dim": prepared.feature_dim,
    "patch_dtype": prepared.patch_dtype,
    "gene_names": prepared.gene_names,
    "gene_transform": prepared.gene_transform,
    "extra_masks": list(prepared.extra_masks),
    "info": prepared.info,
    "table": {c: table[c].tolist() for c in features_lib.TABLE_COLUMNS},
  }


def _validate_prepared(p: PreparedCohort) -> None:
  n = len(p.table)
  missing = [c for c in features_lib.TABLE_COLUMNS if c not in p.table.columns]
  if missing:
    raise CohortError(f"slide table lacks columns {missing}")
  dup = p.table["slide_id"][p.table["slide_id"].duplicated()].tolist()
  if dup:
    raise CohortError(f"duplicated slide ids {dup[:5]}: each slide must appear once")
  # A slide without expression (all NaN in both subspaces) passes where the layout allowed it
  # (`missing_expression: allow`, checked by missing.absent_expression); a partial NaN never does.
  absent = np.zeros(n, bool)
  if (
    p.info.get("missing_expression") == "allow"
    and p.genes_tumour.ndim == 2 == p.genes_micro.ndim
    and len(p.genes_tumour) == n == len(p.genes_micro)
  ):
    absent = np.all(np.isnan(p.genes_tumour), 1) & np.all(np.isnan(p.genes_micro), 1)
  for name, genes in (("tumour", p.genes_tumour), ("micro", p.genes_micro)):
    if genes.ndim != 2 or genes.shape[0] != n or genes.shape[1] != len(p.gene_names[name]):
      raise CohortError(f"genes_{name} has shape {genes.shape}, expected ({n}, {len(p.gene_names[name])})")
    if genes.shape[1] == 0:
      raise CohortError(f"the {name} gene subspace is empty: the signature matched no gene")
    bad = ~np.isfinite(genes) & ~absent[:, None]
    if bad.any():
      r, c = np.argwhere(bad)[0]
      raise CohortError(
        f"gene expression of slide {p.table['slide_id'].iloc[r]!r} has "
        f"{int(bad[r].sum())} NaN/inf values (first: {name} gene "
        f"{p.gene_names[name][c]!r}); expected finite numbers"
      )


def build(source: CohortSource, data_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """Writes the cohort's records unless they exist and are current; returns the version directory.

  Records are reused only when every input file (source.input_files()) has the stamp it had when
  they were built (fingerprint.py). Otherwise they are rebuilt, with a warning naming each
  changed, added or deleted file, or, when the source says `on_stale: refuse`, a CohortError.
  """
  data_dir = pathlib.Path(data_dir or default_data_dir())
  name = config_name(source)
  version_dir = data_dir / "smml_cohort" / name / RECORD_FORMAT_VERSION
  inputs = fingerprint_lib.stamps(source.input_files())
  if (version_dir / SIDECAR).is_file() and (version_dir / "dataset_info.json").is_file():
    stored = read_sidecar(version_dir).get("inputs")
    found = fingerprint_lib.changes(stored or {}, inputs)
    if not found:
      return version_dir
    what = (
      f"the cohort records in {version_dir} were built from other input files: {fingerprint_lib.summary(found)}"
      if stored is not None
      else f"the cohort records in {version_dir} predate input-file stamps, so whether their "
      f"{len(inputs)} input files changed is unknown"
    )
    if getattr(source, "on_stale", "rebuild") == "refuse":
      raise CohortError(
        f"{what}. Refusing to use them (on_stale: refuse); restore the files, "
        "or set on_stale: rebuild to rebuild the records"
      )
    prepared = source.prepare()  # validate the new inputs before the old records go
    _validate_prepared(prepared)
    log.warning("%s; rebuilding them", what)
    shutil.rmtree(version_dir)  # our own cache folder: only records this function wrote
  else:
    prepared = source.prepare()
    _validate_prepared(prepared)
  print(f"smml_jax: writing cohort records to {version_dir} (once; later runs reuse them)", file=sys.stderr, flush=True)
  with _quiet_tfds():
    builder = SmmlCohort(
      prepared=prepared,
      meta=_meta_of(source, prepared, inputs),
      config=tfds.core.BuilderConfig(name=name),
      data_dir=str(data_dir),
      file_format="array_record",
    )
    builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(download_mode=(tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
    )
  return pathlib.Path(builder.data_dir)


@contextlib.contextmanager
def _quiet_tfds():
  """Silences what TFDS says for remote datasets ("Downloading ... Unknown size", "Using custom
  data configuration", its progress bars); warnings of other kinds still show."""
  from tensorflow_datasets.core.utils import tqdm_utils

  absl_logger = logging.getLogger("absl")
  bars, level = tqdm_utils._active, absl_logger.level  # pylint: disable=protected-access
  tfds.display_progress_bar(False)
  absl_logger.setLevel(logging.ERROR)
  try:
    with contextlib.redirect_stdout(io.StringIO()):  # its termcolor prints
      yield
  finally:
    tfds.display_progress_bar(bars)
    absl_logger.setLevel(level)


def read_sidecar(version_dir: str | os.PathLike) -> dict[str, Any]:
  with open(pathlib.Path(version_dir) / SIDECAR) as f:
    return json.load(f)


def read_genes(version_dir: str | os.PathLike) -> dict[str, np.ndarray]:
  """{'tumour': (n_slides, Gt), 'micro': (n_slides, Gm)} raw float32 gene matrices."""
  with np.load(pathlib.Path(version_dir) / GENES_SIDECAR) as f:
    return {k: f[k].astype(np.float32) for k in ("tumour", "micro")}


def open_data_source(version_dir: str | os.PathLike):
  """The random-access tfds data source (len, [i], __getitems__) of a written cohort."""
  return tfds.builder_from_directory(str(version_dir)).as_data_source()[SPLIT_NAME]
