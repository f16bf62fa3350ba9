"""Prediction tables of a trained run: per slide, per patient, and the files they are written to."""

from __future__ import annotations

import json
import pathlib
from typing import Mapping

import numpy as np
import pandas as pd

from smml_jax.evaluate.trained_run import TrainedRun


def prediction_table(run: TrainedRun, outputs: Mapping[str, np.ndarray]) -> pd.DataFrame:
  """Per-slide predictions.

  Classification: slide_id, patient_id, prob_<k>, pred, pred_name, and `label` when known.
  Survival: slide_id, patient_id, hazard_<k>, surv_<k> (survival curve at the end of bin k), risk
  (minus the summed curve; higher = worse), pred_bin (first bin whose survival drops below 0.5,
  K-1 if none), and `time` / `event` when known.
  """
  task = run.task_spec
  return pd.DataFrame(
    {
      "slide_id": outputs["slide_id"].astype(str),
      "patient_id": outputs["patient_id"].astype(str),
      **task.prediction_columns(outputs["logits"]),
      **task.truth_columns(outputs),
    }
  )


def patient_table(run: TrainedRun, slides: pd.DataFrame) -> pd.DataFrame:
  """Patient-level predictions: class probabilities (or survival curves) averaged over slides.

  Survival: the mean curve gives risk = -sum(mean curve) (= the mean slide risk) and pred_bin.
  """
  group = slides.groupby("patient_id", sort=False)
  frame = pd.DataFrame({"patient_id": list(group.groups), "n_slides": group.size().to_numpy()})
  return frame.assign(**run.task_spec.patient_columns(group))


def write_predictions(
  out_dir: str | pathlib.Path, run: TrainedRun, slides: pd.DataFrame, patients: pd.DataFrame, source: str
) -> dict[str, pathlib.Path]:
  """predictions.csv, patients.csv and predictions.json (both tables plus what produced them)."""
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  paths = {
    "slides_csv": out_dir / "predictions.csv",
    "patients_csv": out_dir / "patients.csv",
    "json": out_dir / "predictions.json",
  }
  slides.to_csv(paths["slides_csv"], index=False)
  patients.to_csv(paths["patients_csv"], index=False)
  meta = {
    "run_dir": str(run.run_dir),
    "checkpoint": run.checkpoint,
    "epoch": run.epoch,
    "task": run.task,
    "model": run.config.model,
    "input": source,
    "class_names": list(run.class_names),
  }
  meta.update(run.task_spec.prediction_meta(run.preprocessor.surv_cuts))
  document = {
    "meta": meta,
    "slides": json.loads(slides.to_json(orient="records")),
    "patients": json.loads(patients.to_json(orient="records")),
  }
  paths["json"].write_text(json.dumps(document, indent=1))
  return paths
