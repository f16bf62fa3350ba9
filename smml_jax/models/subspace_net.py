"""The full subspace model: two gene encoders, two histology branches, fused classifier."""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from smml_jax.models.branch import BranchConfig, SubspaceBranch
from smml_jax.models.layers import TorchDense
from smml_jax.models.outputs import ModelOutput
from smml_jax.models.snn import SNN
from smml_jax.ops import dispatch


@dataclasses.dataclass(frozen=True)
class SubspaceConfig:
  """The paper's model; defaults reproduce the original (DeformPathomicNet, fusion "concat").

  `single_subspace=True` is the ablation with one branch on all genes (tumour + micro
  concatenated): it reports through the tumour fields of ModelOutput and has no micro fields.
  """

  num_classes: int = 4
  branch: BranchConfig = BranchConfig()
  snn_widths: Sequence[int] = (64, 48, 32, 128)
  snn_dropout: float = 0.1
  single_subspace: bool = False

  def stacks_branches(self, dtype=jnp.float32) -> bool:
    """Whether the two histology branches run as one vmapped computation (`fuse_subspaces`):
    where the attention path is plain XLA, so the compiled program holds one copy of the branch
    instead of two (the TPU compile's time follows the program's structure more than its array
    sizes; benchmarks/RESULTS.md, "v5e compile time, session 8"). The native and Pallas paths,
    and an `auto` not yet resolved to a platform, run them one after the other."""
    attention, _ = self.branch.attention.implementations(dtype)
    return not self.single_subspace and attention in dispatch.BATCHABLE_ATTENTION


class SubspaceNet(nn.Module):
  """Call: batch {'patches' (B, N, D), 'genes_tumour' (B, Gt), 'genes_micro' (B, Gm)} -> ModelOutput.

  logits = classifier(concat(embed_tumour, embed_micro)); logits_tumour / logits_micro are the
  per-subspace classifiers (logged only; the original never trains them). For survival all logits
  are pre-sigmoid hazards.

  Missing expression: with `batch['has_expression']` (B,) bool, an example without expression
  gets, in each subspace, a learned "absent" gene embedding (`absent_tumour` / `absent_micro`,
  (dim,), created when the model is initialised with that input; zeros at first) in place of the
  SNN's output. The gene embedding is the branch's guide (fused into every histology token, and
  the deformable offsets follow it), so a fixed zero would be an arbitrary point of that space the
  SNN can also reach; a learned token is the guide that serves histology alone best, as the mask
  tokens of masked and missing-modality models are. An all-True mask is the unmasked function.
  """

  config: SubspaceConfig = SubspaceConfig()
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, batch: Mapping[str, jax.Array], *, train: bool = False) -> ModelOutput:
    cfg = self.config
    patches = batch["patches"]
    chex.assert_rank([patches, batch["genes_tumour"], batch["genes_micro"]], [3, 2, 2])
    if cfg.snn_widths[-1] != cfg.branch.dim:
      raise ValueError(
        f"the SNN embedding ({cfg.snn_widths[-1]}) must equal the branch dim ({cfg.branch.dim}) for the token fusion"
      )
    snn = lambda name: SNN(tuple(cfg.snn_widths), cfg.snn_dropout, name=name)
    branch = lambda name: SubspaceBranch(cfg.branch, self.dtype, name=name)
    head = lambda name: TorchDense(cfg.num_classes, name=name)
    present = batch.get("has_expression")

    def gene_embedding(name: str, genes: jax.Array) -> jax.Array:
      gene = snn(name)(genes, train=train)
      if present is None:
        return gene
      absent = self.param(name.replace("snn", "absent"), nn.initializers.zeros, (gene.shape[-1],), jnp.float32)
      return jnp.where(jnp.asarray(present, bool)[:, None], gene, absent.astype(gene.dtype))

    if cfg.single_subspace:
      genes = jnp.concatenate([batch["genes_tumour"], batch["genes_micro"]], axis=-1)
      gene = gene_embedding("snn", genes)
      embed, grid, mass = branch("branch")(patches, gene, train=train)
      logits = head("classifier")(embed.astype(jnp.float32))
      return ModelOutput(
        logits=logits, features=embed, embed_tumour=embed, gene_tumour=gene, grid_tumour=grid, attn_tumour=mass
      )

    gene_t = gene_embedding("snn_tumour", batch["genes_tumour"])
    gene_m = gene_embedding("snn_micro", batch["genes_micro"])
    return fuse_subspaces(self, patches, gene_t, gene_m, train=train)


def fuse_subspaces(
  owner: nn.Module, patches: jax.Array, gene_t: jax.Array, gene_m: jax.Array, *, train: bool
) -> ModelOutput:
  """The two histology branches guided by their gene embeddings, the fused classifier and the
  per-subspace ones. Called inside `owner`'s compact `__call__` (the submodules and their names,
  `branch_tumour`, `classifier`, ..., belong to it; `owner.config` is a SubspaceConfig).

  patches: (B, N, D); gene_t, gene_m: (B, dim) gene embeddings (encoded or predicted).
  """
  cfg, dtype = owner.config, owner.dtype
  head = lambda name: TorchDense(cfg.num_classes, name=name)
  # Initialisation creates each branch's parameters under its own name; sown intermediates are
  # kept per branch only by the separate calls.
  stacked = cfg.stacks_branches(dtype) and not (owner.is_initializing() or owner.is_mutable_collection("intermediates"))
  if stacked:
    (embed_t, embed_m), (grid_t, grid_m), (mass_t, mass_m) = _stacked_branches(owner, patches, gene_t, gene_m, train)
  else:
    branch = lambda name: SubspaceBranch(cfg.branch, dtype, name=name)
    embed_t, grid_t, mass_t = branch("branch_tumour")(patches, gene_t, train=train)
    embed_m, grid_m, mass_m = branch("branch_micro")(patches, gene_m, train=train)
  embed_t, embed_m = embed_t.astype(jnp.float32), embed_m.astype(jnp.float32)
  features = jnp.concatenate([embed_t, embed_m], axis=-1)
  return ModelOutput(
    logits=head("classifier")(features),
    logits_tumour=head("classifier_tumour")(embed_t),
    logits_micro=head("classifier_micro")(embed_m),
    features=features,
    embed_tumour=embed_t,
    embed_micro=embed_m,
    gene_tumour=gene_t,
    gene_micro=gene_m,
    grid_tumour=grid_t,
    grid_micro=grid_m,
    attn_tumour=mass_t,
    attn_micro=mass_m,
  )


def _stacked_branches(owner: nn.Module, patches: jax.Array, gene_t: jax.Array, gene_m: jax.Array, train: bool):
  """Both branches as one computation: the parameters of `branch_tumour` and `branch_micro`
  stacked on a leading axis of 2 and one branch vmapped over it, the patches shared.

  The same function as two calls (values and parameter gradients; tests/test_branch_stacking.py); the
  attention dropout draws its masks from one key per branch. Returns the branch outputs, each
  stacked (2, ...): embeddings (2, B, dim), grids, key masses.
  """
  params = owner.variables["params"]
  stacked = jax.tree.map(lambda t, m: jnp.stack([t, m]), params["branch_tumour"], params["branch_micro"])
  module = SubspaceBranch(owner.config.branch, owner.dtype, parent=None)
  needs_rng = train and owner.config.branch.attention.dropout > 0
  keys = jax.random.split(owner.make_rng("dropout")) if needs_rng else None

  def branch(branch_params, gene, key):
    rngs = {"dropout": key} if key is not None else None
    return module.apply({"params": branch_params}, patches, gene, train=train, rngs=rngs)

  return jax.vmap(branch)(stacked, jnp.stack([gene_t, gene_m]), keys)
