"""The record schema: one example = one slide, as a tfds FeaturesDict.

Every cohort writes the same fields (see the PREAMBLE's shared conventions):
  patches       (N, D)  float16 or float32 patch features, N = grid_side ** 2, row-major grid
  coords        (N, 2)  float32 slide positions of the patch in each cell (grid positions when the
                        source has none; -1 for empty cells of a `coords` layout)
  tissue_mask   (N,)    bool, False for empty grid cells (only a `coords` layout leaves cells empty)
  genes_tumour  (Gt,)   float32 raw expression (normalised later, on the training split only)
  genes_micro   (Gm,)   float32 raw expression
  idh, codel, cdkn2a, histology, grade, diagnosis, subtype, surv_bin, event   int64 (-1 = missing)
  surv_time     ()      float32 days (-1 = missing)
  patient_id, slide_id  text
plus per-cohort extras such as the synthetic cohort's `immune_mask` / `tumour_mask` (N,) bool.

`surv_bin` is stored as -1: the bins are cut on the training split, so `Preprocessor` assigns them.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import tensorflow_datasets as tfds

INT_LABELS = ("idh", "codel", "cdkn2a", "histology", "grade", "diagnosis", "subtype", "surv_bin", "event")
FLOAT_LABELS = ("surv_time",)
TEXT_FIELDS = ("patient_id", "slide_id")
# Label columns every slide table carries (surv_bin is assigned later by the Preprocessor).
TABLE_COLUMNS = TEXT_FIELDS + tuple(k for k in INT_LABELS if k != "surv_bin") + FLOAT_LABELS
PATCH_DTYPES = {"float16": np.float16, "float32": np.float32}


def features_dict(
  grid_side: int,
  feature_dim: int,
  n_genes_tumour: int,
  n_genes_micro: int,
  patch_dtype: str = "float16",
  extra_masks: tuple[str, ...] = (),
) -> tfds.features.FeaturesDict:
  """The FeaturesDict of one slide for a cohort of the given shapes."""
  if patch_dtype not in PATCH_DTYPES:
    raise ValueError(f"patch_dtype must be one of {sorted(PATCH_DTYPES)}, got {patch_dtype!r}")
  n = grid_side * grid_side

  def array(shape, dtype):
    # Raw bytes: tf.train.Example float lists are written element by element (~50x slower) and
    # would widen float16 to float32.
    return tfds.features.Tensor(shape=shape, dtype=dtype, encoding=tfds.features.Encoding.BYTES)

  spec: dict[str, object] = {
    "patches": array((n, feature_dim), PATCH_DTYPES[patch_dtype]),
    "coords": array((n, 2), np.float32),
    "tissue_mask": array((n,), np.bool_),
    "genes_tumour": array((n_genes_tumour,), np.float32),
    "genes_micro": array((n_genes_micro,), np.float32),
  }
  for name in extra_masks:
    spec[name] = array((n,), np.bool_)
  for name in INT_LABELS:
    spec[name] = tfds.features.Scalar(dtype=np.int64)
  for name in FLOAT_LABELS:
    spec[name] = tfds.features.Scalar(dtype=np.float32)
  for name in TEXT_FIELDS:
    spec[name] = tfds.features.Text()
  return tfds.features.FeaturesDict(spec)


def decode_example(example: Mapping[str, object]) -> dict[str, np.ndarray]:
  """A record as read back from the data source -> the pipeline's numpy dict (float32, str)."""
  out: dict[str, np.ndarray] = {}
  for key, value in example.items():
    if key in TEXT_FIELDS:
      out[key] = np.asarray(value.decode() if isinstance(value, bytes) else str(value))
    elif key == "patches" or key in FLOAT_LABELS or key == "coords":
      out[key] = np.asarray(value, np.float32)
    else:
      out[key] = np.asarray(value)
  return out
