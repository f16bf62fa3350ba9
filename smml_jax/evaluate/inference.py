"""Inference with a trained run: load it, read new inputs the way it was trained, predict.

One module a job; this one gathers their public names so `inference.<name>` keeps working:

  trained_run    loading a run directory and restoring its params (`load_run`, `TrainedRun`)
  gene_matching  matching an input's genes to the run's by name (`align_genes`)
  slide_files    one slide's HDF5 bag and one sample's expression table (`slide_example`)
  batching       preprocessed batches of a cohort or of examples (`cohort_batches`)
  forward        forward passes over batches (`run_model`)
  predictions    per-slide and per-patient tables and their files (`prediction_table`)
  predict        the whole path from a run and an input to written predictions (`predict`)
"""

from smml_jax.evaluate.batching import check_cohort, cohort_batches, example_batches, split_indices
from smml_jax.evaluate.errors import InferenceError
from smml_jax.evaluate.forward import CARRIED_FIELDS, MODEL_INPUTS, OUTPUT_FIELDS, forward_fn, run_model
from smml_jax.evaluate.gene_matching import (
  EXPRESSION_FILE_OMIC,
  MISSING_GENE_POLICIES,
  GeneAlignment,
  MissingGenesFilled,
  align_genes,
  training_mean_raw,
)
from smml_jax.evaluate.predictions import patient_table, prediction_table, write_predictions
from smml_jax.evaluate.slide_files import KNOWN_FEATURE_DATASETS, read_expression, read_slide_features, slide_example
from smml_jax.evaluate.trained_run import (
  CHECKPOINTS,
  LAYOUT_DEFAULTS,
  SlideFormat,
  TrainedRun,
  load_run,
  model_template,
  resolve_run_dir,
  restore_params,
  slide_format_of,
)

__all__ = [
  "CARRIED_FIELDS",
  "CHECKPOINTS",
  "EXPRESSION_FILE_OMIC",
  "GeneAlignment",
  "InferenceError",
  "KNOWN_FEATURE_DATASETS",
  "LAYOUT_DEFAULTS",
  "MISSING_GENE_POLICIES",
  "MODEL_INPUTS",
  "MissingGenesFilled",
  "OUTPUT_FIELDS",
  "SlideFormat",
  "TrainedRun",
  "align_genes",
  "check_cohort",
  "cohort_batches",
  "example_batches",
  "forward_fn",
  "load_run",
  "model_template",
  "patient_table",
  "prediction_table",
  "read_expression",
  "read_slide_features",
  "resolve_run_dir",
  "restore_params",
  "run_model",
  "slide_example",
  "slide_format_of",
  "split_indices",
  "training_mean_raw",
  "write_predictions",
]
