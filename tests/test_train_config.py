"""Run-config validation at parse time: every bad key or value is refused naming the key."""

import pytest

from smml_jax.train.config import ConfigError, config_from_dict, config_to_dict, make_config


@pytest.mark.parametrize(
  "override, needles",
  [
    ("train.epochs=0", ("train.epochs", "positive")),
    ("train.epochs=-3", ("train.epochs", "positive")),
    ("train.batch_size=0", ("train.batch_size", "positive")),
    ("train.eval_batch_size=-1", ("train.eval_batch_size", "positive")),
    ("optim.learning_rate=0", ("optim.learning_rate", "positive")),
    ("optim.learning_rate=-1e-3", ("optim.learning_rate", "positive")),
    ("optim.learning_rate=.nan", ("optim.learning_rate", "positive")),
    ("model_options.dimm=32", ("model_options", "dimm")),
    ("train.selection_metric=aucc", ("train.selection_metric", "did you mean 'auc'")),
    ("train.selection_metric=c_index", ("train.selection_metric", "grading")),
    ("optim.epochs=5", ("optim.epochs", "removed", "train.epochs")),
    ("train.epochz=5", ("train.epochz", "did you mean train.epochs")),
    ("model=subspac", ("model", "did you mean 'subspace'")),
    ("train.coordination=pcgrd", ("train.coordination", "did you mean 'pcgrad'")),
    ("optim.warmup_epochs=12", ("warmup_epochs",)),
    ("impl.checkpoint_every_steps=-2", ("impl.checkpoint_every_steps", ">= 0")),
  ],
)
def test_bad_run_config_is_refused_at_parse_time(override, needles):
  with pytest.raises(ConfigError) as err:
    make_config({"task": "grading", "train": {"epochs": 10}}, overrides=[override])
  for needle in needles:
    assert needle in str(err.value), str(err.value)


def test_selection_metric_follows_the_task():
  assert make_config({"task": "survival"}, overrides=["train.selection_metric=c_index_ipcw"]).train.selection_metric
  with pytest.raises(ConfigError, match="'survival'"):
    make_config({"task": "survival"}, overrides=["train.selection_metric=auc"])


def test_schedule_length_is_train_epochs_and_is_not_stored():
  config = make_config({"task": "grading"}, overrides=["train.epochs=7"])
  assert config.optim.epochs == 7
  stored = config_to_dict(config)
  assert "epochs" not in stored["optim"]
  assert config_from_dict(stored) == config


def test_a_stored_config_from_before_the_removal_still_loads():
  stored = config_to_dict(make_config({"task": "grading"}, overrides=["train.epochs=3"]))
  stored["optim"]["epochs"] = 20  # what older runs stored: a value the loop never used
  assert config_from_dict(stored).optim.epochs == 3
