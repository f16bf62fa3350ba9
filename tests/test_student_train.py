"""Distillation end to end: a subspace teacher, then a student of the same split; teachers of
another fold / split seed / model / shape are refused before anything is written."""

import json

import pytest
from _tiny import TINY_MODEL, write_spec

from experiments import run as run_cli
from smml_jax.train.config import ConfigError, make_config
from smml_jax.train.loop import train
from smml_jax.train.teacher import TeacherError


@pytest.fixture(scope="module")
def tiny_spec(tmp_path_factory):
  return write_spec(tmp_path_factory.mktemp("spec") / "tiny.yaml")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("records"))


def config(spec, data_dir, model="subspace", teacher=None, fold=0, options=None, **data):
  layer = {
    "task": "grading",
    "model": model,
    "model_options": options or TINY_MODEL,
    "data": {"data": str(spec), "data_dir": data_dir, "split": "kfold", "n_folds": 3, "fold": fold, **data},
    "train": {"epochs": 2, "batch_size": 8, "eval_batch_size": 8, "progress": False},
  }
  if teacher is not None:
    layer["distill"] = {"teacher": str(teacher)}
  return make_config(layer)


@pytest.fixture(scope="module")
def teacher_run(tiny_spec, data_dir, tmp_path_factory):
  out = tmp_path_factory.mktemp("runs") / "teacher"
  train(config(tiny_spec, data_dir), out, log=lambda _: None)
  return out


def test_student_needs_a_teacher_and_only_the_student_takes_one(tiny_spec, data_dir, tmp_path):
  with pytest.raises(ConfigError, match="distill.teacher.*--teacher RUN_DIR"):
    config(tiny_spec, data_dir, model="subspace-student")
  with pytest.raises(ConfigError, match="distill.teacher.*only model 'subspace-student'"):
    config(tiny_spec, data_dir, model="abmil", teacher=tmp_path, options={"hidden": 8})
  with pytest.raises(ConfigError, match="distill.temperature"):
    make_config({"model": "subspace-student", "distill": {"teacher": "x", "temperature": 0}})


@pytest.mark.slow
def test_student_distils_from_a_teacher_of_its_split(teacher_run, tiny_spec, data_dir, tmp_path):
  out = tmp_path / "student"
  code = run_cli.main(
    [
      "--task",
      "grading",
      "--model",
      "subspace-student",
      "--teacher",
      str(teacher_run),
      "--out",
      str(out),
      "--data",
      str(tiny_spec),
      "--data-dir",
      data_dir,
      "--epochs",
      "1",
      "--no-progress",
      "--set",
      "data.split=kfold",
      "--set",
      "data.n_folds=3",
      "--set",
      f"model_options={json.dumps(TINY_MODEL)}",
    ]
  )
  assert code == 0
  stored = json.loads((out / "config.json").read_text())
  assert stored["distill"]["teacher"] == str(teacher_run.resolve())
  rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
  train_row = next(r for r in rows if r["split"] == "train")
  for part in ("distill_kd", "distill_embed_tumour", "distill_gene_micro", "task_loss"):
    assert part in train_row and train_row[part] >= 0.0, part
  assert train_row["distill_gene_tumour"] > 0.0  # a fresh predictor is not the teacher's SNN
  assert json.loads((out / "summary.json").read_text())["model"] == "subspace-student"


@pytest.mark.slow
@pytest.mark.parametrize("change, named", [({"fold": 1}, "fold 1"), ({"split_seed": 3}, "split_seed 3")])
def test_a_teacher_of_another_split_is_refused_naming_both(teacher_run, tiny_spec, data_dir, tmp_path, change, named):
  out = tmp_path / "student"
  cfg = config(tiny_spec, data_dir, model="subspace-student", teacher=teacher_run, **change)
  with pytest.raises(TeacherError) as raised:
    train(cfg, out, log=lambda _: None)
  message = str(raised.value)
  assert str(teacher_run) in message and "another split" in message
  key = next(iter(change))
  assert f"{key} 0" in message.replace("'", "") or f"{key} {0!r}" in message  # the teacher's
  assert named.split()[0] in message and f"{key} {change[key]}" in message  # the student's
  assert not out.exists()  # refused before the run directory was touched


@pytest.mark.slow
def test_a_teacher_of_another_model_or_width_is_refused(teacher_run, tiny_spec, data_dir, tmp_path):
  abmil = tmp_path / "abmil"
  train(
    config(tiny_spec, data_dir, model="abmil", options={"hidden": 8, "attention_hidden": 8}), abmil, log=lambda _: None
  )
  with pytest.raises(TeacherError, match="'abmil' run"):
    train(config(tiny_spec, data_dir, model="subspace-student", teacher=abmil), tmp_path / "s1", log=lambda _: None)
  wide = dict(TINY_MODEL, dim=32, snn_widths=[8, 8, 8, 32])
  with pytest.raises(TeacherError, match="16-d, the student's 32-d"):
    train(
      config(tiny_spec, data_dir, model="subspace-student", teacher=teacher_run, options=wide),
      tmp_path / "s2",
      log=lambda _: None,
    )
  assert not (tmp_path / "s1").exists() and not (tmp_path / "s2").exists()


def test_compare_trains_the_teacher_before_its_student(tmp_path):
  from experiments import compare
  from smml_jax.evaluate import comparison_runner

  args = compare.build_parser().parse_args(
    ["--task", "grading", "--out", str(tmp_path / "c"), "--models", "subspace-student,abmil"]
  )
  with pytest.raises(comparison_runner.CompareError, match="list 'subspace' before it"):
    comparison_runner.run_compare(compare.settings(args), log=lambda _: None)
  comparison_runner.check_teacher_order(["subspace", "subspace-student"])  # the teacher first
  assert not (tmp_path / "c").exists()


def test_compare_cell_of_the_student_names_its_cells_teacher(tmp_path):
  from experiments import compare
  from smml_jax.evaluate import comparison_runner

  settings = compare.settings(compare.build_parser().parse_args(["--task", "grading", "--out", str(tmp_path)]))
  teacher = tmp_path / "runs" / "subspace" / "fold1-seed2"
  cfg = comparison_runner.cell_config(
    settings, [], "subspace-student", {"split": "kfold", "n_folds": 3}, 1, 2, teacher=teacher
  )
  assert cfg.distill.teacher == str(teacher) and cfg.data.fold == 1 and cfg.train.seed == 2
