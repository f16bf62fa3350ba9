"""Config files: `extends:` layering, and the shipped per-task files as differences from base.yaml."""

import pathlib

import pytest
import yaml

from smml_jax.train.config import ConfigError, read_config_file

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "configs"
TASKS = ("diagnosis", "grading", "subtype", "survival")


def _write(path, text):
  path.write_text(text)
  return path


def test_extends_merges_the_base_under_the_file_relative_to_its_folder(tmp_path):
  (tmp_path / "sub").mkdir()
  _write(tmp_path / "base.yaml", "task: grading\ntrain: {epochs: 10, batch_size: 8}\n")
  child = _write(tmp_path / "sub" / "child.yaml", "extends: ../base.yaml\ntask: survival\ntrain: {epochs: 3}\n")
  assert read_config_file(child) == {"task": "survival", "train": {"epochs": 3, "batch_size": 8}}


def test_extends_chains_and_refuses_a_missing_base_or_a_cycle(tmp_path):
  _write(tmp_path / "a.yaml", "extends: b.yaml\nmodel: snn\n")
  _write(tmp_path / "b.yaml", "extends: c.yaml\ntask: subtype\n")
  _write(tmp_path / "c.yaml", "task: grading\nmodel: abmil\n")
  assert read_config_file(tmp_path / "a.yaml") == {"task": "subtype", "model": "snn"}
  _write(tmp_path / "c.yaml", "extends: a.yaml\n")
  with pytest.raises(ConfigError, match=r"c\.yaml, key 'extends'.*cycle \(a\.yaml -> b\.yaml -> c\.yaml -> a\.yaml\)"):
    read_config_file(tmp_path / "a.yaml")
  _write(tmp_path / "c.yaml", "extends: nowhere.yaml\n")
  with pytest.raises(ConfigError, match=r"c\.yaml.*'extends'.*nowhere\.yaml.*does not exist"):
    read_config_file(tmp_path / "a.yaml")
  _write(tmp_path / "c.yaml", "extends: [b.yaml]\n")
  with pytest.raises(ConfigError, match=r"c\.yaml.*'extends'.*expected a file name"):
    read_config_file(tmp_path / "a.yaml")


@pytest.mark.parametrize("task", TASKS)
def test_each_task_file_is_base_plus_its_differences_with_a_runnable_header(task):
  path = CONFIG_DIR / f"{task}.yaml"
  own = yaml.safe_load(path.read_text())
  base = read_config_file(CONFIG_DIR / "base.yaml")
  assert own["extends"] == "base.yaml" and own["task"] == task
  assert not any(own.get(k) == v for k, v in base.items())  # only differences are written
  header = path.read_text().split("\n\n")[0]
  assert f"python -m experiments.run --task {task}" in header and "expected" in header.lower()
  assert read_config_file(path)["task"] == task
