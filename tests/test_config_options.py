"""Typed model options: each model's options dataclass, checked when the config is parsed."""

import dataclasses

import pytest

from smml_jax.models.registry import build_model, model_names, options_class
from smml_jax.train.config import ConfigError, make_config


@pytest.mark.parametrize("name", model_names())
def test_every_declared_option_is_one_the_builder_takes(name):
  options = options_class(name)()
  fields = {f.name for f in dataclasses.fields(options)}
  assert fields and not fields & {
    "num_classes",
    "feature_dim",
    "n_genes_tumour",
    "n_genes_micro",
    "attention_impl",
    "query_tile",
    "sampler",
    "platform",
  }
  build_model(
    name, num_classes=3, n_genes_tumour=4, n_genes_micro=5, feature_dim=8, options=dataclasses.asdict(options)
  )


@pytest.mark.parametrize(
  "model, options, match",
  [
    ("subspace", {"dimm": 8}, r"model_options\.dimm.*did you mean model_options\.dim\?"),
    ("abmil", {"hiden": 8}, r"model_options\.hiden.*did you mean model_options\.hidden\?"),
    ("subspace", {"dim": "wide"}, r"'model_options\.dim': expected an integer, got 'wide'"),
    ("subspace", {"heads": 0}, r"'model_options\.heads': expected a number >= 1, got 0"),
    ("subspace", {"dropout": 1.0}, r"'model_options\.dropout': expected a number >= 0\.0 and < 1\.0"),
    ("subspace", {"snn_widths": [8, 0]}, r"'model_options\.snn_widths\[1\]': expected a number >= 1"),
    ("snn", {"widths": 8}, r"'model_options\.widths': expected a list, got 8"),
    ("subspace", {"offset_scale": 0}, r"'model_options\.offset_scale': expected a positive number, got 0\.0"),
    ("mcat", {"num_classes": 3}, r"model_options\.num_classes"),
  ],
)
def test_a_bad_option_is_refused_at_parse_time_naming_key_and_expectation(model, options, match):
  with pytest.raises(ConfigError, match=match):
    make_config({"model": model, "model_options": options})


def test_options_keep_their_order_and_are_coerced_to_the_declared_type():
  config = make_config({"model_options": {"snn_widths": (8, 8, 8, 32), "offset_scale": 2}})
  assert list(config.model_options) == ["snn_widths", "offset_scale"]
  assert config.model_options["offset_scale"] == 2.0
  assert isinstance(config.model_options["offset_scale"], float)
  assert config.model_options["snn_widths"] == [8, 8, 8, 32]  # as stored in config.json


def test_the_compute_dtype_is_applied_by_the_builder_for_every_caller():
  # One place turns train.compute_dtype into the module's dtype: training, prediction and a
  # distillation teacher all build through it, so a bf16 run is evaluated as it was trained.
  import jax.numpy as jnp

  shapes = dict(num_classes=3, n_genes_tumour=4, n_genes_micro=4, feature_dim=8)
  assert build_model("subspace", **shapes).module.dtype == jnp.float32
  assert build_model("subspace", **shapes, compute_dtype="bfloat16").module.dtype == jnp.bfloat16
  with pytest.raises(ValueError, match="model 'abmil' has no compute dtype option"):
    build_model("abmil", **shapes, compute_dtype="bfloat16")
  with pytest.raises(ValueError, match="expected 'float32' or 'bfloat16'"):
    build_model("subspace", **shapes, compute_dtype="float16")
