"""From a trained run and a new input to written prediction tables (what `smml-predict` runs)."""

from __future__ import annotations

import dataclasses
import pathlib
import warnings
from typing import Optional, Union

from smml_jax.evaluate import batching, forward, missing_modality, predictions, slide_files
from smml_jax.evaluate.errors import InferenceError
from smml_jax.evaluate.gene_matching import MissingGenesFilled
from smml_jax.evaluate.trained_run import TrainedRun, load_run, resolve_run_dir
from smml_jax.train import run_dir as run_dir_lib


@dataclasses.dataclass(frozen=True)
class CohortInput:
  """A cohort ('synthetic' or a spec file), optionally only one of the run's stored splits."""

  spec: str
  data_dir: Optional[str] = None  # where cohort records are written (default: the run's)
  split: str = "all"  # 'all' | 'train' | 'val' | 'test'
  without_expression: bool = False  # predict every slide from the slide alone


@dataclasses.dataclass(frozen=True)
class SlideInput:
  """One slide: its HDF5 feature file and its expression file (None: predicted from the slide
  alone, which needs a slides-only run)."""

  features: str
  genes: Optional[str]
  slide_id: Optional[str] = None  # default: the feature file's stem
  patient_id: Optional[str] = None  # default: the slide id
  grid_layout: Optional[str] = None  # default: the run's


def _batches(run: TrainedRun, what: Union[CohortInput, SlideInput], missing_genes: str, batch_size: Optional[int]):
  """(batches, description of the input, default output folder name)."""
  if isinstance(what, SlideInput) and what.genes is None:
    example = missing_modality.slide_only_example(
      run, what.features, slide_id=what.slide_id, patient_id=what.patient_id, grid_layout=what.grid_layout
    )
    return (
      batching.example_batches(run, [example], batch_size),
      f"{what.features} (no expression)",
      str(example["slide_id"]),
    )
  if isinstance(what, SlideInput):
    example = slide_files.slide_example(
      run,
      what.features,
      what.genes,
      slide_id=what.slide_id,
      patient_id=what.patient_id,
      missing_genes=missing_genes,
      grid_layout=what.grid_layout,
    )
    return (
      batching.example_batches(run, [example], batch_size),
      f"{what.features} + {what.genes}",
      str(example["slide_id"]),
    )
  from smml_jax.data.spec import load_cohort

  cohort = load_cohort(what.spec, what.data_dir or run.config.data.data_dir)
  indices = batching.split_indices(run, cohort, what.split)
  table = cohort.slides.iloc[indices]
  absent = missing_modality.expression_missing(table) | what.without_expression
  missing_modality.require_expression(
    run,
    table["slide_id"].to_numpy()[absent],
    table["patient_id"].to_numpy()[absent],
    "--without-expression"
    if what.without_expression
    else f"cohort {what.spec}, column {missing_modality.HAS_EXPRESSION!r}",
  )
  slides_only = missing_modality.slides_only(run)
  with warnings.catch_warnings():
    if slides_only:  # the genes are never read: none is missing
      warnings.simplefilter("ignore", MissingGenesFilled)
    batches = batching.cohort_batches(
      run, cohort, indices, batch_size=batch_size, missing_genes="zero" if slides_only else missing_genes
    )
  if slides_only:
    batches = (missing_modality.blank_genes(b) for b in batches)
  elif missing_modality.learned_absence(run) and absent.any():
    absent_ids = frozenset(table["slide_id"].to_numpy()[absent].astype(str))
    batches = (missing_modality.mark_absent(b, absent_ids) for b in batches)
  stem = "synthetic" if what.spec == "synthetic" else pathlib.Path(what.spec).stem
  return batches, f"{what.spec} ({what.split})", f"{stem}-{what.split}"


def predict(
  run_dir: Optional[str | pathlib.Path],
  what: Union[CohortInput, SlideInput],
  *,
  which: str = "best",
  checkpoint: Optional[str | pathlib.Path] = None,
  missing_genes: str = "error",
  batch_size: Optional[int] = None,
  out: Optional[str | pathlib.Path] = None,
) -> dict[str, pathlib.Path]:
  """Predicts `what` with a trained run and writes predictions.csv, patients.csv, predictions.json.

  Args:
    run_dir: a run directory, whose `which` checkpoint ('best' or 'latest') is used; or None and
    checkpoint: one of a run's checkpoint folders (it names the run and the checkpoint).
    what: the input.
    missing_genes: 'error' or 'zero' (see `gene_matching.align_genes`).
    batch_size: default the run's eval batch size.
    out: output folder (default <run>/predictions/<input name>).

  Returns:
    {'slides_csv' | 'patients_csv' | 'json': path written}.
  """
  if (run_dir is None) == (checkpoint is None):
    raise InferenceError("give either a run directory or a checkpoint folder")
  if checkpoint is not None:
    run_dir, which = resolve_run_dir(checkpoint)
  run = load_run(run_dir, which)
  batches, source, name = _batches(run, what, missing_genes, batch_size)
  outputs = forward.run_model(run, batches)
  slides = missing_modality.with_inputs_column(
    run, predictions.prediction_table(run, outputs), outputs.get(forward.PRESENCE)
  )
  patients = predictions.patient_table(run, slides)
  folder = pathlib.Path(out) if out else pathlib.Path(run_dir) / run_dir_lib.PREDICT_DIR / name
  return predictions.write_predictions(folder, run, slides, patients, source)
