"""The structured output every model in smml_jax returns."""

from __future__ import annotations

from typing import Optional

import flax.struct
import jax


@flax.struct.dataclass
class ModelOutput:
  """What a model computes for a batch of B slides.

  Only `logits` is always present; a baseline leaves the subspace fields `None`.
  For the survival task the logits are pre-sigmoid hazards over K time bins.

  Attributes:
    logits: (B, K) fused prediction (the only output that enters the task loss).
    logits_tumour: (B, K) tumour-subspace classifier on `embed_tumour` (logged, not trained).
    logits_micro: (B, K) microenvironment-subspace classifier on `embed_micro`.
    features: (B, F) the concatenated subspace embeddings fed to the fused classifier.
    embed_tumour: (B, E) tumour-subspace embedding (the branch's `pathomic_vec`).
    embed_micro: (B, E) microenvironment-subspace embedding.
    gene_tumour: (B, H) tumour gene embedding (SNN output).
    gene_micro: (B, H) microenvironment gene embedding.
    grid_tumour: (B * G, 2, S, S) un-normalised deformable sampling grid (rows b * G + g,
      channel 0 = x/column, 1 = y/row, in offset-grid cell units) or (B * G, 1, S) in 1D.
    grid_micro: same for the microenvironment branch.
    attn_tumour: (B, G, N, M) attention probabilities (only when asked for).
    attn_micro: same for the microenvironment branch.
  """

  logits: jax.Array
  logits_tumour: Optional[jax.Array] = None
  logits_micro: Optional[jax.Array] = None
  features: Optional[jax.Array] = None
  embed_tumour: Optional[jax.Array] = None
  embed_micro: Optional[jax.Array] = None
  gene_tumour: Optional[jax.Array] = None
  gene_micro: Optional[jax.Array] = None
  grid_tumour: Optional[jax.Array] = None
  grid_micro: Optional[jax.Array] = None
  attn_tumour: Optional[jax.Array] = None
  attn_micro: Optional[jax.Array] = None
