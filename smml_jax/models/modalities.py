"""How a fused classifier divides between modalities.

The coordinated models end in one Dense `classifier` over concat(embed_tumour, embed_micro): its
Flax kernel (E_t + E_m, K) has the tumour rows first. This module is the one description of that
split: the coordination split of the kernel, and each modality's share of the fused logits.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp

from smml_jax.optim.coordination import ModalitySplit

FUSED_KERNEL = "classifier/kernel"


def fused_classifier_split(widths: Sequence[int]) -> dict[str, ModalitySplit]:
  """{'classifier/kernel': split into the modalities' rows}, for embedding widths (E_1, ..., E_M)."""
  return {FUSED_KERNEL: ModalitySplit.concat(tuple(int(w) for w in widths))}


def subspace_logits(kernel: jax.Array, bias: jax.Array, embeds: Sequence[jax.Array]) -> list[jax.Array]:
  """Each modality's share of the fused logits: embed_m @ kernel_m + bias / M, (B, K) each.

  Args:
    kernel: (F, K) the fused classifier's Flax kernel over concat(embeds), F = sum_m E_m.
    bias: (K,) its bias.
    embeds: M arrays (B, E_m).
  """
  kernel = jnp.asarray(kernel)
  widths = [e.shape[-1] for e in embeds]
  if kernel.shape[0] != sum(widths):
    raise ValueError(
      f"subspace_logits: kernel has {kernel.shape[0]} input rows, expected the sum of the embedding widths {widths}"
    )
  offsets = [sum(widths[:m]) for m in range(len(widths))]
  return [
    jnp.matmul(jnp.asarray(e, jnp.float32), kernel[o : o + w], precision=jax.lax.Precision.HIGHEST) + bias / len(embeds)
    for e, o, w in zip(embeds, offsets, widths)
  ]


def fused_modality_logits(params: Any, out: Any) -> list[jax.Array]:
  """`subspace_logits` of a model's `classifier` params and its output's tumour / micro embeddings."""
  classifier = params["classifier"]
  return subspace_logits(classifier["kernel"], classifier["bias"], (out.embed_tumour, out.embed_micro))
