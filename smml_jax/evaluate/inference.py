"""Inference with a trained run: load it, read new slides the way it was trained, predict.

A run directory (written by `smml_jax.train.loop.train`) carries everything needed:
`config.json` (model and options), `preprocessor.json` (gene transform, training-split
normalisation statistics, survival cut points), `cohort.json` (grid side, feature dimension, gene
names per subspace in model order, split slide ids, and the cohort spec that says how slides were
read: grid layout, HDF5 dataset names) and `checkpoints/{best,latest}` (orbax). New inputs are
matched to the run by gene NAME (reordered into the run's order); genes the run needs but the input
lacks are an error that lists them, unless `missing_genes='zero'`, which fills them with the
training mean (0 after normalisation).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import warnings
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pandas as pd

from smml_jax.data import genes as genes_lib
from smml_jax.data.bags import bag_to_grid
from smml_jax.data.errors import CohortError
from smml_jax.data.features import INT_LABELS
from smml_jax.data.normalise import SUBSPACES, Preprocessor
from smml_jax.data.pipeline import BatchIterator
from smml_jax.models.outputs import ModelOutput
from smml_jax.models.registry import ModelSpec, build_model
from smml_jax.tasks import Task, get_task
from smml_jax.train import run_dir as run_dir_lib
from smml_jax.train.checkpoints import MANIFEST_DIR, CheckpointError, verify_step
from smml_jax.train.config import RunConfig

Batch = dict[str, np.ndarray]
MISSING_GENE_POLICIES = ("error", "zero")
CHECKPOINTS = ("best", "latest")
MODEL_INPUTS = ("patches", "genes_tumour", "genes_micro")
# How each cohort layout reads a slide's HDF5 file unless its spec says otherwise.
LAYOUT_DEFAULTS = {
    "original": {"grid_layout": "sample", "feature_dataset": "Res_feature", "coords_dataset": None},
    "clam": {"grid_layout": "sample", "feature_dataset": "features", "coords_dataset": "coords"},
    "synthetic": {"grid_layout": "sample", "feature_dataset": None, "coords_dataset": None},
}
KNOWN_FEATURE_DATASETS = ("Res_feature", "features")


class InferenceError(ValueError):
  """A run directory or a new input that cannot be used for inference."""


# ----------------------------------------------------------------------------- loading a run


@dataclasses.dataclass(frozen=True)
class SlideFormat:
  """How the run's training cohort turned an HDF5 bag into a grid (see `smml_jax.data.bags`)."""
  grid_layout: str = "sample"
  feature_dataset: Optional[str] = None  # None: auto-detect `Res_feature` / `features`
  coords_dataset: Optional[str] = "coords"


@dataclasses.dataclass(frozen=True)
class TrainedRun:
  """A trained run ready for inference.

  Attributes:
    run_dir: the run directory.
    config: its RunConfig.
    preprocessor: gene normalisation and survival cut points fitted on its training split.
    gene_names: {'tumour': [...], 'micro': [...]} the model's gene inputs, in order.
    grid_side, feature_dim: patches are (grid_side ** 2, feature_dim).
    splits: {'train'|'val'|'test': [slide ids]}.
    slide_format: how slides were read from HDF5 files.
    spec: the built model.
    params: restored parameters.
    checkpoint: 'best' or 'latest'; epoch: the checkpoint's epoch (0-based).
    cohort_path: the training cohort's record directory (as written at training time).
  """
  run_dir: pathlib.Path
  config: RunConfig
  preprocessor: Preprocessor
  gene_names: dict[str, list[str]]
  grid_side: int
  feature_dim: int
  splits: dict[str, list[str]]
  slide_format: SlideFormat
  spec: ModelSpec
  params: Any
  checkpoint: str
  epoch: int
  cohort_path: str

  @property
  def task(self) -> str:
    return self.config.task

  @property
  def task_spec(self) -> Task:
    return get_task(self.config.task, self.config.num_classes)

  @property
  def num_classes(self) -> int:
    return self.config.num_classes

  @property
  def class_names(self) -> tuple[str, ...]:
    return self.task_spec.class_names


def slide_format_of(cohort_record: Mapping[str, Any], config: RunConfig) -> SlideFormat:
  """The slide reading options of the training cohort (cohort.json's `spec`, else config's spec)."""
  spec = cohort_record.get("spec")
  if spec is None:  # a run directory written before cohort.json carried the spec
    data = str(config.data.data)
    spec = {"layout": "synthetic"}
    if data != "synthetic" and pathlib.Path(data).is_file():
      from smml_jax.data.spec import read_spec
      spec = read_spec(data)
  layout = spec.get("layout", "synthetic")
  defaults = LAYOUT_DEFAULTS.get(layout, LAYOUT_DEFAULTS["clam"])
  return SlideFormat(**{k: spec.get(k, v) for k, v in defaults.items()})


def model_template(spec: ModelSpec, grid_side: int, feature_dim: int, n_genes: Mapping[str, int]):
  """Abstract params (ShapeDtypeStructs) of `spec.module` for one slide of the given shapes."""
  dummy = {"patches": jnp.zeros((1, grid_side * grid_side, feature_dim), jnp.float32),
           "genes_tumour": jnp.zeros((1, n_genes["tumour"]), jnp.float32),
           "genes_micro": jnp.zeros((1, n_genes["micro"]), jnp.float32)}
  key = jax.random.PRNGKey(0)
  variables = jax.eval_shape(lambda: spec.module.init({"params": key, "dropout": key}, dummy))
  return variables["params"]


def restore_params(checkpoint_dir: str | pathlib.Path, params_template: Any,
                   which: str = "best") -> tuple[Any, dict]:
  """Restores only the params of a `RunCheckpoints` checkpoint (no optimiser state needed).

  Args:
    checkpoint_dir: the run's `checkpoints/` folder.
    params_template: params pytree or its abstract shapes (`model_template`).
    which: 'best' or 'latest'.

  Returns:
    (params as numpy-backed jax arrays, the checkpoint's JSON meta).
  """
  if which not in CHECKPOINTS:
    raise InferenceError(f"checkpoint must be one of {CHECKPOINTS}, got {which!r}")
  folder = pathlib.Path(checkpoint_dir).resolve() / which
  if not folder.is_dir():
    raise InferenceError(f"no {which!r} checkpoint under {checkpoint_dir} (expected {folder})")
  options = ocp.CheckpointManagerOptions(create=False)
  with ocp.CheckpointManager(folder, options=options) as manager:
    step = manager.latest_step()
    if step is None:
      raise InferenceError(f"{folder} holds no checkpoint step")
    what = f"checkpoint {which}/{step} (saved after epoch {step})"
    try:
      verify_step(folder / str(step), folder.parent / MANIFEST_DIR / f"{which}-{step}.json",
                  what)
    except CheckpointError as e:
      raise InferenceError(str(e)) from e
    device = jax.local_devices()[0]
    sharding = jax.sharding.SingleDeviceSharding(device)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                            params_template)
    restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=sharding), abstract)
    try:
      restored = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.PyTreeRestore(item={"params": abstract},
                                       restore_args={"params": restore_args},
                                       partial_restore=True),
          meta=ocp.args.JsonRestore()))
    except Exception as e:  # orbax / tensorstore raise many types for unreadable files
      raise InferenceError(f"{what} in {folder / str(step)} cannot be read: "
                           f"{type(e).__name__}: {e}") from e
  return restored["state"]["params"], dict(restored["meta"])


def resolve_run_dir(path: str | pathlib.Path) -> tuple[pathlib.Path, str]:
  """A run directory or one of its checkpoint folders -> (run directory, 'best'|'latest').

  Accepts DIR, DIR/checkpoints, DIR/checkpoints/best|latest and DIR/checkpoints/best|latest/<step>.
  """
  try:
    found, kind = run_dir_lib.locate(path, CHECKPOINTS)
  except run_dir_lib.RunDirError as e:
    raise InferenceError(str(e)) from e
  return found, kind or "best"


def load_run(run_dir: str | pathlib.Path, checkpoint: str = "best") -> TrainedRun:
  """Reads a run directory (`smml_jax.train.run_dir.load`) and restores its params from
  `checkpoints/<checkpoint>`."""
  try:
    stored = run_dir_lib.load(run_dir)
  except run_dir_lib.RunDirError as e:
    raise InferenceError(f"{run_dir} is not a usable training run directory: {e}") from e
  config, record = stored.config, stored.cohort
  preprocessor = Preprocessor.from_json(json.dumps(stored.preprocessor))
  gene_names = {s: list(record["gene_names"][s]) for s in SUBSPACES}
  spec = build_model(config.model, num_classes=config.num_classes,
                     n_genes_tumour=len(gene_names["tumour"]),
                     n_genes_micro=len(gene_names["micro"]), feature_dim=int(record["feature_dim"]),
                     options=config.model_options, impl=config.impl.model_options())
  if config.train.compute_dtype == "bfloat16" and hasattr(spec.module, "dtype"):
    spec = dataclasses.replace(spec, module=spec.module.clone(dtype=jnp.bfloat16))
  template = model_template(spec, int(record["grid_side"]), int(record["feature_dim"]),
                            {s: len(v) for s, v in gene_names.items()})
  params, meta = restore_params(stored.checkpoints, template, checkpoint)
  return TrainedRun(run_dir=stored.path, config=config, preprocessor=preprocessor,
                    gene_names=gene_names, grid_side=int(record["grid_side"]),
                    feature_dim=int(record["feature_dim"]), splits=record.get("splits", {}),
                    slide_format=slide_format_of(record, config), spec=spec, params=params,
                    checkpoint=checkpoint, epoch=int(meta.get("epoch", -1)),
                    cohort_path=str(record.get("path", "")))


# ----------------------------------------------------------------------------- gene matching


# An expression file (GDC STAR table or gene/value table) holds RNA values: for a run whose genes are
# named <GENE>_<omic> (CLAM cohorts) its symbol G is the feature G_rnaseq, never G_cnv or G_mut.
EXPRESSION_FILE_OMIC = "rnaseq"


class MissingGenesFilled(UserWarning):
  """`missing_genes='zero'` filled genes the input lacks with the training mean."""


@dataclasses.dataclass(frozen=True)
class GeneAlignment:
  """Maps an input's gene columns onto the run's, per subspace.

  Attributes:
    columns: subspace -> (G,) int index into the input's columns, -1 where the input lacks it.
    fill: subspace -> (G,) raw value that normalises to the training mean (used where -1).
    missing: subspace -> run gene names the input lacks.
  """
  columns: Mapping[str, np.ndarray]
  fill: Mapping[str, np.ndarray]
  missing: Mapping[str, list[str]]

  def apply(self, subspace: str, raw: np.ndarray) -> np.ndarray:
    """(..., G_input) raw expression -> (..., G_run) raw expression in the run's order."""
    idx = self.columns[subspace]
    raw = np.asarray(raw, np.float32)
    out = raw[..., np.maximum(idx, 0)]
    return np.where(idx >= 0, out, self.fill[subspace]).astype(np.float32)


def training_mean_raw(preprocessor: Preprocessor, subspace: str) -> np.ndarray:
  """(G,) raw expression whose normalised value is the training mean (0 after z-scoring)."""
  mean = np.asarray(preprocessor.mean[subspace], np.float64)
  if preprocessor.gene_transform == "log1p_zscore":
    return np.expm1(mean).astype(np.float32)
  return mean.astype(np.float32)


def align_genes(run: TrainedRun, available: Mapping[str, Sequence[str]] | Sequence[str],
                missing_genes: str = "error", where: str = "the input") -> GeneAlignment:
  """Matches the run's genes to an input's gene names.

  Args:
    run: the trained run.
    available: the input's gene names, either per subspace (a cohort: {'tumour': [...], ...}) or
      one flat list (a single slide's expression table, which serves both subspaces).
    missing_genes: 'error' (default: raise, listing every missing gene) or 'zero' (fill with the
      training mean, i.e. 0 after normalisation).
    where: names the input in error messages.

  A run gene matches an input gene of exactly the same name (modality suffix included). A flat
  list is an expression file, whose symbol G also serves as G_rnaseq (EXPRESSION_FILE_OMIC). With
  'zero', a MissingGenesFilled warning says how many genes were filled.
  """
  if missing_genes not in MISSING_GENE_POLICIES:
    raise InferenceError(f"missing_genes must be one of {MISSING_GENE_POLICIES}, got "
                         f"{missing_genes!r}")
  flat = not isinstance(available, Mapping)
  columns, fill, missing = {}, {}, {}
  for s in SUBSPACES:
    names = [str(n) for n in (available if flat else available[s])]
    position: dict[str, int] = {}
    for i, name in enumerate(names):
      position.setdefault(name, i)
    if flat:
      for i, name in enumerate(names):
        position.setdefault(f"{name}_{EXPRESSION_FILE_OMIC}", i)
    idx = np.array([position.get(g, -1) for g in run.gene_names[s]], np.int64)
    columns[s] = idx
    missing[s] = [g for g, j in zip(run.gene_names[s], idx) if j < 0]
    fill[s] = training_mean_raw(run.preprocessor, s)
  n_missing = sum(len(v) for v in missing.values())
  listing = "; ".join(f"{s} ({len(v)} of {len(run.gene_names[s])}): {', '.join(v)}"
                      for s, v in missing.items() if v)
  if n_missing and missing_genes == "error":
    raise InferenceError(f"{where} lacks {n_missing} gene(s) the run {run.run_dir} was trained "
                         f"on: {listing}. Provide them, or pass --missing-genes zero to fill "
                         "them with the training mean")
  if n_missing:
    total = sum(len(run.gene_names[s]) for s in SUBSPACES)
    warnings.warn(MissingGenesFilled(
        f"{where}: {n_missing} of {total} gene(s) the run was trained on were missing and "
        f"filled with the training mean (--missing-genes zero): {listing}"), stacklevel=2)
  return GeneAlignment(columns, fill, missing)


def read_expression(path: str | pathlib.Path) -> pd.Series:
  """One sample's expression: gene symbol -> value.

  Accepts a GDC STAR 'augmented gene counts' TSV (first line a `# gene-model` comment, columns
  gene_id, gene_name, ..., fpkm_uq_unstranded) or a two-column table (CSV/TSV, with or without a
  header) of gene symbol and value. Duplicate symbols: the first row wins.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise InferenceError(f"gene expression file {path} does not exist")
  with path.open() as f:
    first = f.readline()
  if first.startswith("#"):
    try:
      return genes_lib.read_gdc_star(path)
    except CohortError as e:
      raise InferenceError(str(e)) from e
  sep = "\t" if "\t" in first else ","
  try:
    table = pd.read_csv(path, sep=sep, header=None, dtype=str)
  except Exception as e:  # pandas' errors do not always name the file
    raise InferenceError(f"cannot read gene expression file {path}: {e}") from e
  if table.shape[1] != 2:
    raise InferenceError(f"gene expression file {path}: expected two columns (gene symbol, value) "
                         f"or a GDC STAR TSV, got {table.shape[1]} columns")
  values = pd.to_numeric(table[1], errors="coerce")
  if np.isnan(values.iloc[0]) and not np.isnan(values.iloc[1:]).all():
    table, values = table.iloc[1:], values.iloc[1:]  # a header row
  bad = np.flatnonzero(~np.isfinite(values.to_numpy(np.float64)))
  if bad.size:
    row = int(bad[0])
    raise InferenceError(f"gene expression file {path}, row {row + 1} (gene "
                         f"{table.iloc[row, 0]!r}): value {table.iloc[row, 1]!r} is not a finite "
                         "number")
  series = pd.Series(values.to_numpy(np.float64), index=table[0].astype(str).str.strip())
  return series[~series.index.duplicated(keep="first")]


# ----------------------------------------------------------------------------- new slides


def read_slide_features(run: TrainedRun, path: str | pathlib.Path, *,
                        grid_layout: Optional[str] = None, feature_dataset: Optional[str] = None,
                        coords_dataset: Optional[str] = None) -> dict[str, np.ndarray]:
  """One slide's HDF5 bag laid out on the run's grid: patches, coords, tissue_mask.

  The layout and dataset names default to the run's training cohort; the feature dataset is
  otherwise auto-detected (`Res_feature` (1, N, D) of the original layout, `features` (N, D) of
  CLAM), and `coords` is used when present.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise InferenceError(f"feature file {path} does not exist")
  fmt = run.slide_format
  layout = grid_layout or fmt.grid_layout
  try:
    f = h5py.File(path, "r")
  except OSError as e:
    raise InferenceError(f"feature file {path} is not a readable HDF5 file: {e}") from e
  with f:
    names = [feature_dataset] if feature_dataset else (
        [fmt.feature_dataset] if fmt.feature_dataset else []) + list(KNOWN_FEATURE_DATASETS)
    fds = next((n for n in names if n in f), None)
    if fds is None:
      raise InferenceError(f"{path}: no feature dataset {names} (has {sorted(f.keys())})")
    feats = np.asarray(f[fds][()], np.float32)
    cds = coords_dataset or fmt.coords_dataset or "coords"
    coords = np.asarray(f[cds][()], np.float32) if cds in f else None
  if feats.ndim == 3 and feats.shape[0] == 1:
    feats = feats[0]
  if feats.ndim != 2 or feats.shape[0] == 0 or feats.shape[1] != run.feature_dim:
    raise InferenceError(f"{path}: dataset {fds!r} has shape {tuple(f'{d}' for d in feats.shape)}"
                         f"; the run {run.run_dir} needs (N, {run.feature_dim}) or "
                         f"(1, N, {run.feature_dim}) patch features (feature dimension "
                         f"{run.feature_dim})")
  if not np.all(np.isfinite(feats)):
    raise InferenceError(f"{path}: dataset {fds!r} has NaN/inf values")
  if coords is not None and coords.shape != (feats.shape[0], 2):
    raise InferenceError(f"{path}: dataset {cds!r} has shape {coords.shape}, expected "
                         f"({feats.shape[0]}, 2)")
  if layout == "coords" and coords is None:
    raise InferenceError(f"{path}: the run lays slides out by patch coordinates "
                         f"(grid_layout 'coords') but the file has no dataset {cds!r}")
  patches, cell_coords, tissue = bag_to_grid(feats, coords, run.grid_side, layout)
  return {"patches": patches.astype(np.float32), "coords": cell_coords, "tissue_mask": tissue,
          "has_coords": np.asarray(coords is not None)}


def slide_example(run: TrainedRun, features_path: str | pathlib.Path,
                  genes_path: str | pathlib.Path, *, slide_id: Optional[str] = None,
                  patient_id: Optional[str] = None, missing_genes: str = "error",
                  **format_options) -> dict[str, np.ndarray]:
  """One new slide (feature file + expression file) -> an example with RAW genes in run order.

  `slide_id` defaults to the feature file's stem, `patient_id` to the slide id.
  """
  features_path = pathlib.Path(features_path)
  example = read_slide_features(run, features_path, **format_options)
  expression = read_expression(genes_path)
  alignment = align_genes(run, list(expression.index), missing_genes, where=str(genes_path))
  values = expression.to_numpy(np.float32)
  for s in SUBSPACES:
    example[f"genes_{s}"] = alignment.apply(s, values)
  slide_id = slide_id or features_path.stem
  example["slide_id"] = np.asarray(slide_id)
  example["patient_id"] = np.asarray(patient_id or slide_id)
  return example


def check_cohort(run: TrainedRun, cohort) -> None:
  """Grid side and feature dimension of a cohort must be the run's."""
  problems = []
  if cohort.feature_dim != run.feature_dim:
    problems.append(f"feature dimension {cohort.feature_dim} (the run needs {run.feature_dim})")
  if cohort.grid_side != run.grid_side:
    problems.append(f"grid side {cohort.grid_side} (the run needs {run.grid_side})")
  if problems:
    raise InferenceError(f"cohort {cohort.path} does not fit the run {run.run_dir}: "
                         f"{'; '.join(problems)}")


def split_indices(run: TrainedRun, cohort, split: str) -> np.ndarray:
  """Record indices of the run's stored split ('train'/'val'/'test') or of every slide ('all')."""
  if split == "all":
    return np.arange(len(cohort), dtype=np.int64)
  if split not in run.splits:
    raise InferenceError(f"the run {run.run_dir} stores no {split!r} split (has "
                         f"{sorted(run.splits)}); use --split all")
  index_of = {s: i for i, s in enumerate(cohort.slides["slide_id"].astype(str))}
  absent = [s for s in run.splits[split] if s not in index_of]
  if absent:
    raise InferenceError(f"cohort {cohort.path} lacks {len(absent)} slide(s) of the run's "
                         f"{split!r} split, e.g. {absent[:5]}; is it the run's training cohort?")
  return np.array([index_of[s] for s in run.splits[split]], np.int64)


def cohort_batches(run: TrainedRun, cohort, indices: Sequence[int], *,
                   batch_size: Optional[int] = None, missing_genes: str = "error") -> BatchIterator:
  """Preprocessed batches (run gene order, run normalisation; padded, with `mask`) of a cohort."""
  check_cohort(run, cohort)
  alignment = align_genes(run, cohort.gene_names, missing_genes, where=f"cohort {cohort.path}")

  def preprocess(batch: Batch) -> Batch:
    batch = dict(batch)
    for s in SUBSPACES:
      batch[f"genes_{s}"] = alignment.apply(s, batch[f"genes_{s}"])
    return run.preprocessor(batch)

  return BatchIterator(cohort.source, indices, batch_size or run.config.train.eval_batch_size,
                       shuffle=False, drop_remainder=False, preprocess=preprocess)


def example_batches(run: TrainedRun, examples: Sequence[Mapping[str, np.ndarray]],
                    batch_size: Optional[int] = None) -> Iterator[Batch]:
  """Preprocessed, padded batches (with `mask`) of examples holding raw genes in run order."""
  batch_size = batch_size or run.config.train.eval_batch_size
  for lo in range(0, len(examples), batch_size):
    chunk = list(examples[lo:lo + batch_size])
    mask = np.zeros(batch_size, np.bool_)
    mask[:len(chunk)] = True
    chunk += [chunk[-1]] * (batch_size - len(chunk))
    batch = {k: np.stack([np.asarray(e[k]) for e in chunk]) for k in chunk[0]}
    batch["mask"] = mask
    yield run.preprocessor(batch)


# ----------------------------------------------------------------------------- forward passes


def forward_fn(run: TrainedRun) -> Callable[[Any, Mapping[str, jax.Array]], ModelOutput]:
  """jit-compiled (params, batch) -> ModelOutput in eval mode (one per model, reused)."""
  return _forward(run.spec.module)


@functools.lru_cache(maxsize=8)
def _forward(module) -> Callable[[Any, Mapping[str, jax.Array]], ModelOutput]:
  return jax.jit(lambda params, batch: module.apply({"params": params}, batch, train=False))


OUTPUT_FIELDS = ("logits", "grid_tumour", "grid_micro", "attn_tumour", "attn_micro")
CARRIED_FIELDS = ("slide_id", "patient_id", "coords", "tissue_mask", "immune_mask",
                  "tumour_mask", "surv_time") + INT_LABELS


def run_model(run: TrainedRun, batches: Iterable[Batch], fields: Sequence[str] = ("logits",),
              params: Any = None) -> dict[str, np.ndarray]:
  """Model outputs over batches, padding removed, plus the batches' ids, labels and masks.

  Args:
    fields: ModelOutput fields to keep (e.g. OUTPUT_FIELDS); per-example fields are (B, ...);
      a grid (B * G, ...) is returned as (B, G, ...).
    params: the params to run (default: the run's own; e.g. an `ablation.ablated_params` copy).

  Returns:
    field -> (n, ...) arrays over the real (unpadded) examples, in batch order, with
    `patch_norm` (n, N) = the L2 norm of each patch feature (a neutral background for figures).
  """
  forward = forward_fn(run)
  chunks: dict[str, list[np.ndarray]] = {}
  for batch in batches:
    mask = np.asarray(batch["mask"], bool)
    out = forward(run.params if params is None else params,
                  {k: jnp.asarray(batch[k]) for k in MODEL_INPUTS})
    b = mask.shape[0]
    for name in fields:
      value = getattr(out, name)
      if value is None:
        continue
      value = np.asarray(value, np.float32)
      if value.shape[0] != b:  # (B * G, ...) grids
        value = value.reshape(b, value.shape[0] // b, *value.shape[1:])
      chunks.setdefault(name, []).append(value[mask])
    for name in CARRIED_FIELDS:
      if name in batch:
        chunks.setdefault(name, []).append(np.asarray(batch[name])[mask])
    norm = np.linalg.norm(np.asarray(batch["patches"], np.float32), axis=-1)
    chunks.setdefault("patch_norm", []).append(norm[mask])
  if not chunks:
    raise InferenceError("no slide to predict")
  return {k: np.concatenate(v) for k, v in chunks.items()}


# ----------------------------------------------------------------------------- prediction tables


def prediction_table(run: TrainedRun, outputs: Mapping[str, np.ndarray]) -> pd.DataFrame:
  """Per-slide predictions.

  Classification: slide_id, patient_id, prob_<k>, pred, pred_name, and `label` when known.
  Survival: slide_id, patient_id, hazard_<k>, surv_<k> (survival curve at the end of bin k), risk
  (minus the summed curve; higher = worse), pred_bin (first bin whose survival drops below 0.5,
  K-1 if none), and `time` / `event` when known.
  """
  task = run.task_spec
  return pd.DataFrame({"slide_id": outputs["slide_id"].astype(str),
                       "patient_id": outputs["patient_id"].astype(str),
                       **task.prediction_columns(outputs["logits"]),
                       **task.truth_columns(outputs)})


def patient_table(run: TrainedRun, slides: pd.DataFrame) -> pd.DataFrame:
  """Patient-level predictions: class probabilities (or survival curves) averaged over slides.

  Survival: the mean curve gives risk = -sum(mean curve) (= the mean slide risk) and pred_bin.
  """
  group = slides.groupby("patient_id", sort=False)
  frame = pd.DataFrame({"patient_id": list(group.groups), "n_slides": group.size().to_numpy()})
  return frame.assign(**run.task_spec.patient_columns(group))


def write_predictions(out_dir: str | pathlib.Path, run: TrainedRun, slides: pd.DataFrame,
                      patients: pd.DataFrame, source: str) -> dict[str, pathlib.Path]:
  """predictions.csv, patients.csv and predictions.json (both tables plus what produced them)."""
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  paths = {"slides_csv": out_dir / "predictions.csv", "patients_csv": out_dir / "patients.csv",
           "json": out_dir / "predictions.json"}
  slides.to_csv(paths["slides_csv"], index=False)
  patients.to_csv(paths["patients_csv"], index=False)
  meta = {"run_dir": str(run.run_dir), "checkpoint": run.checkpoint, "epoch": run.epoch,
          "task": run.task, "model": run.config.model, "input": source,
          "class_names": list(run.class_names)}
  meta.update(run.task_spec.prediction_meta(run.preprocessor.surv_cuts))
  document = {"meta": meta, "slides": json.loads(slides.to_json(orient="records")),
              "patients": json.loads(patients.to_json(orient="records"))}
  paths["json"].write_text(json.dumps(document, indent=1))
  return paths
