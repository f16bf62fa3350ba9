"""Genomics-only models of the TCGA GBM-LGG comparison: `snn` and `subspace-genomic`.

`subspace-genomic` is the paper's model without its histology branch: one SNN gene encoder per
knowledge-defined subspace (tumour, microenvironment), a fused classifier on the concatenated
embeddings, and per-subspace classifiers. Its `ModelSpec` coordinates the fused classifier's
kernel between its tumour and micro halves (`models.modalities.fused_classifier_split`).

The per-subspace heads read `stop_gradient` embeddings (`SubspaceGenomicConfig.detach_heads`):
they are trained with their own task loss so their predictions mean something, but they cannot
move the encoders, so the fused model trains exactly as with the original's logged-only heads.

`snn` is the project's genomic baseline `SNNBaseline` (one SNN on tumour + micro genes).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from smml_jax.models.baselines.layers import read_genes
from smml_jax.models.baselines.snn_only import SNNBaseline
from smml_jax.models.outputs import ModelOutput
from smml_jax.models.modalities import fused_classifier_split
from smml_jax.models.registry import ModelSpec, coordinated_leaves
from smml_jax.models.snn import SNN

GENOMIC_MODELS = ("snn", "subspace-genomic")
# Models that need a non-empty microenvironment subspace.
NEEDS_MICRO = ("subspace-genomic",)


@dataclasses.dataclass(frozen=True)
class SubspaceGenomicConfig:
  """widths: SNN block widths per subspace (the last is the embedding width E);
  dropout_rate: AlphaDropout rate (0.25 as Pathomic Fusion / MCAT's genomic SNNs);
  detach_heads: per-subspace heads read stop_gradient embeddings (see the module docstring)."""

  num_classes: int = 3
  widths: Sequence[int] = (64, 48, 32, 128)
  dropout_rate: float = 0.25
  detach_heads: bool = True


class SubspaceGenomicNet(nn.Module):
  """batch {'genes_tumour' (B, Gt), 'genes_micro' (B, Gm)} -> ModelOutput.

  gene_t = SNN_t(genes_tumour) (B, E), gene_m = SNN_m(genes_micro) (B, E); the embeddings are
  the gene embeddings (no histology to fuse with); features = concat (B, 2E);
  logits = Dense_K(features) (the `classifier`), logits_tumour / logits_micro = Dense_K of each
  embedding (`classifier_tumour`, `classifier_micro`). Patches are never read.
  """

  config: SubspaceGenomicConfig = SubspaceGenomicConfig()

  @nn.compact
  def __call__(self, batch: Mapping[str, jax.Array], *, train: bool = False) -> ModelOutput:
    cfg = self.config
    tumour, micro = read_genes(batch, model="SubspaceGenomicNet")
    if tumour.shape[-1] == 0 or micro.shape[-1] == 0:
      raise ValueError(
        f"SubspaceGenomicNet: both gene subspaces must be non-empty, got "
        f"genes_tumour {tumour.shape} and genes_micro {micro.shape}"
      )
    snn = lambda name: SNN(tuple(cfg.widths), cfg.dropout_rate, name=name)
    gene_t = snn("snn_tumour")(tumour, train=train)
    gene_m = snn("snn_micro")(micro, train=train)
    features = jnp.concatenate([gene_t, gene_m], axis=-1)
    head_in = jax.lax.stop_gradient if cfg.detach_heads else (lambda x: x)
    return ModelOutput(
      logits=nn.Dense(cfg.num_classes, name="classifier")(features),
      logits_tumour=nn.Dense(cfg.num_classes, name="classifier_tumour")(head_in(gene_t)),
      logits_micro=nn.Dense(cfg.num_classes, name="classifier_micro")(head_in(gene_m)),
      features=features,
      embed_tumour=gene_t,
      embed_micro=gene_m,
      gene_tumour=gene_t,
      gene_micro=gene_m,
    )


def build_genomic_model(
  name: str, *, num_classes: int, n_genes_tumour: int, n_genes_micro: int, options: Mapping[str, Any] | None = None
) -> ModelSpec:
  """`snn` or `subspace-genomic` as a registry `ModelSpec` (consistency never applies).

  Options: `widths`, `dropout_rate` (both models), `detach_heads` (subspace-genomic).
  """
  options = dict(options or {})
  if "widths" in options:
    options["widths"] = tuple(options["widths"])
  if name == "snn":
    unknown = sorted(set(options) - {"widths", "dropout_rate"})
    if unknown:
      raise ValueError(f"unknown options {unknown} for model 'snn'; valid: ['dropout_rate', 'widths']")
    return ModelSpec(
      SNNBaseline(num_classes=num_classes, n_genes_tumour=n_genes_tumour, n_genes_micro=n_genes_micro, **options)
    )
  if name == "subspace-genomic":
    if n_genes_micro == 0 or n_genes_tumour == 0:
      raise ValueError(
        f"model 'subspace-genomic' needs both gene subspaces; got {n_genes_tumour} "
        f"tumour and {n_genes_micro} micro features (the PNAS source has no "
        f"microenvironment features: use source 'porpoise')"
      )
    fields = {f.name for f in dataclasses.fields(SubspaceGenomicConfig)} - {"num_classes"}
    unknown = sorted(set(options) - fields)
    if unknown:
      raise ValueError(f"unknown options {unknown} for model 'subspace-genomic'; valid: {sorted(fields)}")
    config = SubspaceGenomicConfig(num_classes=num_classes, **options)
    width = int(config.widths[-1])
    return ModelSpec(SubspaceGenomicNet(config), coordinated=coordinated_leaves(fused_classifier_split((width, width))))
  raise ValueError(f"unknown genomic model {name!r}; expected one of {GENOMIC_MODELS}")
