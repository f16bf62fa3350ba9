"""Comparison baselines: ABMIL, SNN, concat late fusion, Pathomic Fusion, MCAT."""

from smml_jax.models.baselines.abmil import ABMIL
from smml_jax.models.baselines.concat import ConcatFusion
from smml_jax.models.baselines.mcat import MCAT
from smml_jax.models.baselines.pathomic import PathomicFusion
from smml_jax.models.baselines.registry import BASELINES, build_baseline
from smml_jax.models.baselines.snn_only import SNNBaseline

__all__ = ["ABMIL", "BASELINES", "ConcatFusion", "MCAT", "PathomicFusion", "SNNBaseline", "build_baseline"]
