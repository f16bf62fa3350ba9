"""Every model selectable with `--model`, built from the cohort's shapes and config options."""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax.numpy as jnp

from smml_jax.models.branch import BranchConfig
from smml_jax.models.deform_attention import DeformAttentionConfig
from smml_jax.models.modalities import fused_classifier_split, fused_modality_logits
from smml_jax.models.subspace_net import SubspaceConfig, SubspaceNet
from smml_jax.optim.coordination import ModalitySplit


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A built model and what the training step does with it.

  Attributes:
    module: a Flax module called as module.apply(variables, batch, train=...).
    consistency: the gene-guided consistency loss applies (the model returns gene embeddings
      and sampling grids).
    coordinated: the leaves gradient coordination edits and how each splits between the
      modalities, as sorted (path, ModalitySplit) pairs (hashable); empty = no coordination.
      Build it with `coordinated_leaves({path: split})`.
    frozen: parameter-path prefixes that never train (the original's logged-only heads).
    needs_expression: the model reads the batch's genes; False: it predicts from slides alone
      (inference on slides without expression, `smml_jax.evaluate.missing_modality`).
  """

  module: nn.Module
  consistency: bool = False
  coordinated: tuple[tuple[str, ModalitySplit], ...] = ()
  frozen: tuple[str, ...] = ()
  needs_expression: bool = True

  @property
  def coordination(self) -> bool:
    """Gradient coordination applies (between the modality blocks of `splits`)."""
    return bool(self.coordinated)

  @property
  def splits(self) -> dict[str, ModalitySplit]:
    """{parameter path: ModalitySplit} of the coordinated leaves."""
    return dict(self.coordinated)

  def modality_logits(self, params: Any, out: Any) -> list:
    """Each modality's (B, K) share of the fused logits, scored by the task for coordination."""
    return fused_modality_logits(params, out)


def coordinated_leaves(splits: Mapping[str, ModalitySplit]) -> tuple[tuple[str, ModalitySplit], ...]:
  return tuple(sorted(splits.items(), key=lambda kv: kv[0]))


SUBSPACE_VARIANTS = (
  "subspace",
  "subspace-no-consistency",
  "subspace-no-coordination",
  "subspace-single",
  "subspace-1d",
)
# The WSI-only student (smml_jax.models.student), distilled from a `subspace` teacher.
STUDENT = "subspace-student"
STUDENT_OPTIONS = ("predictor_hidden",)
# Baselines that never read the genes.
SLIDES_ONLY_BASELINES = ("abmil",)


def _subspace_config(num_classes: int, options: Mapping[str, Any], ndim: int, single: bool) -> SubspaceConfig:
  """Routes each option to the config that owns it (attention, branch or model)."""
  attention_fields = {f.name for f in dataclasses.fields(DeformAttentionConfig)}
  branch_fields = {f.name for f in dataclasses.fields(BranchConfig)} - {"attention"}
  model_fields = {f.name for f in dataclasses.fields(SubspaceConfig)} - {"branch", "num_classes"}
  unknown = sorted(set(options) - attention_fields - branch_fields - model_fields)
  if unknown:
    raise ValueError(
      f"unknown model_options {unknown} for the subspace model; valid: "
      f"{sorted(attention_fields | branch_fields | model_fields)}"
    )
  pick = lambda fields: {k: v for k, v in options.items() if k in fields}
  attention = (
    DeformAttentionConfig.original_1d(**pick(attention_fields))
    if ndim == 1
    else DeformAttentionConfig(**pick(attention_fields))
  )
  branch = BranchConfig(attention=attention, **pick(branch_fields))
  model_opts = pick(model_fields)
  if "snn_widths" in model_opts:
    model_opts["snn_widths"] = tuple(model_opts["snn_widths"])
  return SubspaceConfig(num_classes=num_classes, branch=branch, **{"single_subspace": single, **model_opts})


def _baselines() -> Mapping[str, Callable[..., nn.Module]]:
  try:
    from smml_jax.models.baselines.registry import BASELINES
  except ImportError:  # pragma: no cover - baselines ship with the package
    return {}
  return BASELINES


def model_names() -> tuple[str, ...]:
  return SUBSPACE_VARIANTS + (STUDENT,) + tuple(sorted(_baselines()))


# Implementation knobs: how the subspace model is computed, not what it computes (the run config's
# `impl` section; see `train.config.ImplConfig`).
IMPL_OPTIONS = ("attention_impl", "query_tile", "tile_pairs", "sampler", "platform")
# Set by the data's shapes or by the model's name, never by `model_options`.
_NOT_OPTIONS = frozenset(
  {
    "num_classes",
    "feature_dim",
    "n_genes_tumour",
    "n_genes_micro",
    "parent",
    "name",
    "branch",
    "attention",
    "ndim",
    "single_subspace",
    *IMPL_OPTIONS,
  }
)
# The range of every option that has one, as field metadata ('min', 'below': min <= v < below).
# Widths and counts of layers, heads and groups are >= 1, depths >= 0, rates in [0, 1).
_RANGES = {
  **dict.fromkeys(
    (
      "dim",
      "heads",
      "dim_head",
      "offset_groups",
      "downsample",
      "offset_kernel",
      "cpb_hidden",
      "hidden",
      "attention_hidden",
      "path_hidden",
      "fusion_hidden",
      "path_fusion_dim",
      "gene_fusion_dim",
      "embed_dim",
      "n_micro_groups",
      "coattn_heads",
      "num_layers",
      "transformer_heads",
      "ff_hidden",
      "snn_widths",
      "widths",
      "gene_widths",
      "group_sizes",
    ),
    {"min": 1},
  ),
  "cpb_depth": {"min": 0},
  **dict.fromkeys(
    ("dropout", "snn_dropout", "dropout_rate", "attention_dropout_rate", "gene_dropout_rate"),
    {"min": 0.0, "below": 1.0},
  ),
  **dict.fromkeys(("offset_scale", "layer_norm_eps"), {"above": 0.0}),
}


def _option_fields(cls: type) -> list[tuple[str, Any, dataclasses.Field]]:
  hints = typing.get_type_hints(cls)
  return [
    (f.name, hints[f.name], dataclasses.field(default=f.default, metadata=_RANGES.get(f.name, {})))
    for f in dataclasses.fields(cls)
    if f.name not in _NOT_OPTIONS
  ]


@functools.cache
def options_class(name: str) -> type:
  """The typed options of model `name`: a frozen dataclass of every key its `model_options` may
  set, with its type, default and range (field metadata 'min' / 'above' / 'below').

  The subspace models' options are the fields of the configs they route to (attention, branch,
  model); a baseline's are its module's attributes. Sizes come from the data, the 1D / single
  variants from the name and implementation knobs from the `impl` section, so none is an option.
  """
  if name in SUBSPACE_VARIANTS or name == STUDENT:
    fields = [*_option_fields(DeformAttentionConfig), *_option_fields(BranchConfig), *_option_fields(SubspaceConfig)]
    if name == STUDENT:  # the subspace model's options and its gene predictors' width
      from smml_jax.models.student import SubspaceStudent

      default = SubspaceStudent.__dataclass_fields__["predictor_hidden"].default
      fields.append(("predictor_hidden", int, dataclasses.field(default=default, metadata={"min": 1})))
      return dataclasses.make_dataclass("SubspaceStudentOptions", fields, frozen=True)
    return dataclasses.make_dataclass("SubspaceOptions", fields, frozen=True)
  baselines = _baselines()
  if name in baselines:
    cls = baselines[name]
    return dataclasses.make_dataclass(f"{cls.__name__}Options", _option_fields(cls), frozen=True)
  raise ValueError(f"unknown model {name!r}; expected one of {list(model_names())}")


def build_model(
  name: str,
  *,
  num_classes: int,
  n_genes_tumour: int,
  n_genes_micro: int,
  feature_dim: int,
  options: Mapping[str, Any] | None = None,
  impl: Mapping[str, Any] | None = None,
  compute_dtype: str = "float32",
) -> ModelSpec:
  """The model called `name`, e.g. 'subspace' or one of its ablations, or a baseline.

  `impl` holds implementation knobs (IMPL_OPTIONS: attention path, tiles, sampler, the platform
  compiled for); they apply to the subspace models and are ignored by the baselines, which have
  one implementation. `compute_dtype` 'bfloat16' runs the model's matmuls in bfloat16 (params stay
  float32); a model without that option is refused.
  """
  spec = _build(
    name,
    num_classes=num_classes,
    n_genes_tumour=n_genes_tumour,
    n_genes_micro=n_genes_micro,
    feature_dim=feature_dim,
    options=options,
    impl=impl,
  )
  if compute_dtype == "float32":
    return spec
  if compute_dtype != "bfloat16":
    raise ValueError(f"compute dtype {compute_dtype!r}: expected 'float32' or 'bfloat16'")
  if not hasattr(spec.module, "dtype"):
    raise ValueError(f"model {name!r} has no compute dtype option")
  return dataclasses.replace(spec, module=spec.module.clone(dtype=jnp.bfloat16))


def _build(
  name: str,
  *,
  num_classes: int,
  n_genes_tumour: int,
  n_genes_micro: int,
  feature_dim: int,
  options: Mapping[str, Any] | None,
  impl: Mapping[str, Any] | None,
) -> ModelSpec:
  options = dict(options or {})
  impl = dict(impl or {})
  unknown = sorted(set(impl) - set(IMPL_OPTIONS))
  if unknown:
    raise ValueError(f"unknown implementation options {unknown}; valid: {list(IMPL_OPTIONS)}")
  if name == STUDENT:
    return _student(num_classes, options, impl)
  if name in SUBSPACE_VARIANTS:
    options = {**options, **impl}
    config = _subspace_config(
      num_classes, options, ndim=1 if name == "subspace-1d" else 2, single=name == "subspace-single"
    )
    frozen = () if config.single_subspace else ("classifier_tumour", "classifier_micro")
    coordinated = name not in ("subspace-no-coordination", "subspace-single")
    width = config.branch.dim
    return ModelSpec(
      SubspaceNet(config),
      consistency=name != "subspace-no-consistency",
      coordinated=coordinated_leaves(fused_classifier_split((width, width)) if coordinated else {}),
      frozen=frozen,
    )
  baselines = _baselines()
  if name in baselines:
    from smml_jax.models.baselines.registry import build_baseline

    return ModelSpec(
      build_baseline(
        name,
        num_classes=num_classes,
        n_genes_tumour=n_genes_tumour,
        n_genes_micro=n_genes_micro,
        feature_dim=feature_dim,
        **options,
      ),
      needs_expression=name not in SLIDES_ONLY_BASELINES,
    )
  raise ValueError(f"unknown model {name!r}; expected one of {list(model_names())}")


def _student(num_classes: int, options: Mapping[str, Any], impl: Mapping[str, Any]) -> ModelSpec:
  """The subspace model's spec (consistency, coordination, frozen heads) on the student."""
  from smml_jax.models.student import SubspaceStudent

  own = {k: options[k] for k in STUDENT_OPTIONS if k in options}
  rest = {k: v for k, v in options.items() if k not in STUDENT_OPTIONS}
  config = _subspace_config(num_classes, {**rest, **impl}, ndim=2, single=False)
  width = config.branch.dim
  return ModelSpec(
    SubspaceStudent(config, **own),
    consistency=True,
    coordinated=coordinated_leaves(fused_classifier_split((width, width))),
    frozen=("classifier_tumour", "classifier_micro"),
    needs_expression=False,
  )


def implementations(spec: ModelSpec) -> dict[str, Any]:
  """What runs where, for the run directory's and the benchmarks' records: {'platform',
  'attention', 'depthwise', 'sampler', 'branches'} for a deformable-attention model ('auto' where
  no platform was given; branches: 'stacked' (one vmapped computation), 'separate' or 'one'), {}
  for a model without one."""
  config = getattr(spec.module, "config", None)
  attention = getattr(getattr(config, "branch", None), "attention", None)
  if not isinstance(attention, DeformAttentionConfig):
    return {}
  dtype = getattr(spec.module, "dtype", None) or "float32"
  path, conv = attention.implementations(dtype)
  branches = "one" if config.single_subspace else "stacked" if config.stacks_branches(dtype) else "separate"
  return {
    "platform": attention.platform,
    "attention": path,
    "depthwise": conv,
    "sampler": attention.sampler_path(),
    "branches": branches,
  }
