"""Preprocessed batches for inference, cut by the trainer's `BatchIterator` (padded, with `mask`)."""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

from smml_jax.data.normalise import SUBSPACES
from smml_jax.data.pipeline import BatchIterator
from smml_jax.evaluate.errors import InferenceError
from smml_jax.evaluate.gene_matching import align_genes
from smml_jax.evaluate.trained_run import TrainedRun

Batch = dict[str, np.ndarray]


def check_cohort(run: TrainedRun, cohort) -> None:
  """Grid side and feature dimension of a cohort must be the run's."""
  problems = []
  if cohort.feature_dim != run.feature_dim:
    problems.append(f"feature dimension {cohort.feature_dim} (the run needs {run.feature_dim})")
  if cohort.grid_side != run.grid_side:
    problems.append(f"grid side {cohort.grid_side} (the run needs {run.grid_side})")
  if problems:
    raise InferenceError(f"cohort {cohort.path} does not fit the run {run.run_dir}: {'; '.join(problems)}")


def split_indices(run: TrainedRun, cohort, split: str) -> np.ndarray:
  """Record indices of the run's stored split ('train'/'val'/'test') or of every slide ('all')."""
  if split == "all":
    return np.arange(len(cohort), dtype=np.int64)
  if split not in run.splits:
    raise InferenceError(f"the run {run.run_dir} stores no {split!r} split (has {sorted(run.splits)}); use --split all")
  index_of = {s: i for i, s in enumerate(cohort.slides["slide_id"].astype(str))}
  absent = [s for s in run.splits[split] if s not in index_of]
  if absent:
    raise InferenceError(
      f"cohort {cohort.path} lacks {len(absent)} slide(s) of the run's "
      f"{split!r} split, e.g. {absent[:5]}; is it the run's training cohort?"
    )
  return np.array([index_of[s] for s in run.splits[split]], np.int64)


def cohort_batches(
  run: TrainedRun, cohort, indices: Sequence[int], *, batch_size: Optional[int] = None, missing_genes: str = "error"
) -> BatchIterator:
  """Preprocessed batches (run gene order, run normalisation; padded, with `mask`) of a cohort."""
  check_cohort(run, cohort)
  alignment = align_genes(run, cohort.gene_names, missing_genes, where=f"cohort {cohort.path}")

  def preprocess(batch: Batch) -> Batch:
    batch = dict(batch)
    for s in SUBSPACES:
      batch[f"genes_{s}"] = alignment.apply(s, batch[f"genes_{s}"])
    return run.preprocessor(batch)

  return BatchIterator(
    cohort.source,
    indices,
    batch_size or run.config.train.eval_batch_size,
    shuffle=False,
    drop_remainder=False,
    preprocess=preprocess,
  )


def example_batches(
  run: TrainedRun, examples: Sequence[Mapping[str, np.ndarray]], batch_size: Optional[int] = None
) -> BatchIterator:
  """Preprocessed, padded batches (with `mask`) of examples holding raw genes in run order."""
  return BatchIterator(
    list(examples),
    np.arange(len(examples)),
    batch_size or run.config.train.eval_batch_size,
    shuffle=False,
    drop_remainder=False,
    preprocess=run.preprocessor,
  )
