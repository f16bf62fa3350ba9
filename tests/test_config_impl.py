"""The run config's `impl` section: implementation knobs, outside the run's identity."""

import pytest

from smml_jax.train.config import ConfigError, config_from_dict, config_to_dict, make_config, run_identity


def test_impl_section_defaults_and_choices():
  config = make_config({}, overrides=["impl.attention=reference", "impl.query_tile=32"])
  assert (config.impl.attention, config.impl.query_tile, config.impl.sampler) == ("reference", 32, "auto")
  with pytest.raises(ConfigError, match="'impl.attention'.*expected one of"):
    make_config({}, overrides=["impl.attention=flash"])
  with pytest.raises(ConfigError, match="'impl.sampler'"):
    make_config({}, overrides=["impl.sampler=nearest"])


def test_older_model_options_keys_move_to_impl():
  config = make_config(
    {"model_options": {"attention_impl": "fused", "query_tile": 16, "sampler": "matmul", "dim": 128}}
  )
  assert config.model_options == {"dim": 128}
  assert (config.impl.attention, config.impl.query_tile, config.impl.sampler) == ("fused", 16, "matmul")
  # A later layer or --set wins over an earlier one, whichever name each uses.
  later = make_config(
    {"model_options": {"query_tile": 16}},
    {"impl": {"query_tile": 8}},
    overrides=["model_options.attention_impl=reference"],
  )
  assert (later.impl.query_tile, later.impl.attention) == (8, "reference")
  # An old run directory's config.json reads as the same config.
  stored = config_to_dict(make_config({}))
  stored["model_options"] = {"attention_impl": "reference"}
  del stored["impl"]
  assert config_from_dict(stored).impl.attention == "reference"


def test_both_names_disagreeing_in_one_layer_is_an_error_naming_both():
  with pytest.raises(ConfigError, match="model_options.query_tile.*impl.query_tile"):
    make_config({"model_options": {"query_tile": 16}, "impl": {"query_tile": 8}})


def test_run_identity_leaves_out_impl_only():
  a = config_to_dict(make_config({}, overrides=["impl.attention=reference"]))
  b = config_to_dict(make_config({}, overrides=["impl.query_tile=64"]))
  c = config_to_dict(make_config({}, overrides=["train.seed=3"]))
  assert run_identity(a) == run_identity(b) != run_identity(c)
  old = dict(a, model_options={"attention_impl": "fused"})
  del old["impl"]
  assert run_identity(old) == run_identity(a)
