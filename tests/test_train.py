"""The training system end to end on a tiny synthetic cohort: selection, resumption, run dirs."""

import json

import pytest
import yaml

from experiments import run as run_cli
from smml_jax.train.config import ConfigError, make_config
from smml_jax.train.loop import RunDirError, train

TINY_MODEL = {"dim": 16, "heads": 2, "dim_head": 8, "offset_groups": 2, "cpb_hidden": 8,
              "snn_widths": [8, 8, 8, 16]}


@pytest.fixture(scope="module")
def tiny_spec(tmp_path_factory):
  path = tmp_path_factory.mktemp("spec") / "tiny.yaml"
  path.write_text(yaml.safe_dump({"layout": "synthetic", "n_patients": 60, "grid_side": 8,
                                  "feature_dim": 16, "n_genes_tumour": 6, "n_genes_micro": 8}))
  return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("records"))


def tiny_config(spec, data_dir, task="grading", **train):
  return make_config({
      "task": task, "model_options": TINY_MODEL,
      "data": {"data": str(spec), "data_dir": data_dir},
      "train": {"epochs": 3, "batch_size": 8, "eval_batch_size": 8, "progress": False, **train}})


@pytest.fixture(scope="module")
def full_run(tiny_spec, data_dir, tmp_path_factory):
  out = tmp_path_factory.mktemp("runs") / "full"
  summary = train(tiny_config(tiny_spec, data_dir), out, log=lambda _: None)
  return out, summary


def _jsonl(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_run_directory_records(full_run):
  out, summary = full_run
  for name in ("config.json", "preprocessor.json", "cohort.json", "metrics.jsonl",
               "summary.json", "predictions_test.jsonl", "predictions_val.jsonl"):
    assert (out / name).is_file(), name
  assert (out / "checkpoints" / "latest").is_dir() and (out / "checkpoints" / "best").is_dir()
  assert json.loads((out / "summary.json").read_text()) == summary
  rows = _jsonl(out / "metrics.jsonl")
  assert {r["split"] for r in rows} == {"train", "val", "test"}
  assert sorted({r["epoch"] for r in rows}) == [0, 1, 2]


@pytest.mark.slow
def test_best_epoch_is_chosen_on_validation(full_run):
  out, summary = full_run
  rows = _jsonl(out / "metrics.jsonl")
  val = {r["epoch"]: r["auc"] for r in rows if r["split"] == "val"}
  assert summary["best_epoch"] == max(val, key=lambda e: (val[e], -e))
  test_rows = {r["epoch"]: r for r in rows if r["split"] == "test"}
  assert summary["test"] == test_rows[summary["best_epoch"]]
  assert 0.0 <= summary["test"]["auc"] <= 1.0


@pytest.mark.slow
def test_resume_ends_with_exactly_the_uninterrupted_metrics(full_run, tiny_spec, data_dir,
                                                           tmp_path):
  _, summary = full_run
  config = tiny_config(tiny_spec, data_dir)
  out = tmp_path / "resumed"
  partial = train(config, out, stop_after_epoch=0, log=lambda _: None)
  assert partial == {"stopped_after_epoch": 0}
  assert not (out / "summary.json").exists()
  resumed = train(config, out, resume=True, log=lambda _: None)
  assert resumed == summary  # bit for bit: same seed, same data order, same RNG stream
  untimed = lambda rows: [{k: v for k, v in r.items() if k != "slides_per_s"} for r in rows]
  assert untimed(_jsonl(out / "metrics.jsonl")) == untimed(_jsonl(full_run[0] / "metrics.jsonl"))


@pytest.mark.slow
def test_run_directory_holding_another_run_is_refused(full_run, tiny_spec, data_dir):
  out, _ = full_run
  with pytest.raises(RunDirError, match="--resume"):
    train(tiny_config(tiny_spec, data_dir), out, log=lambda _: None)
  with pytest.raises(RunDirError, match="train.epochs"):
    train(tiny_config(tiny_spec, data_dir, epochs=5), out, resume=True, log=lambda _: None)


@pytest.mark.slow
def test_survival_run(tiny_spec, data_dir, tmp_path):
  summary = train(tiny_config(tiny_spec, data_dir, task="survival", epochs=1), tmp_path / "s",
                  log=lambda _: None)
  assert summary["selection_metric"] == "c_index"
  assert 0.0 <= summary["test"]["c_index"] <= 1.0
  rows = _jsonl(tmp_path / "s" / "predictions_test.jsonl")
  assert {"risk", "time", "event", "hazard_0"} <= set(rows[0])


@pytest.mark.slow
def test_cli_prints_a_table_and_rejects_bad_config(tiny_spec, data_dir, tmp_path, capsys):
  args = ["--task", "subtype", "--data", str(tiny_spec), "--data-dir", data_dir, "--epochs", "1",
          "--out", str(tmp_path / "cli"), "--no-progress"]
  for key, value in TINY_MODEL.items():
    args += ["--set", f"model_options.{key}={json.dumps(value)}"]
  assert run_cli.main(args) == 0
  out = capsys.readouterr().out
  assert "best epoch" in out and "auc" in out and "balanced_accuracy" in out
  assert run_cli.main(args) == 2  # the directory now holds a run
  assert "--resume" in capsys.readouterr().err
  assert run_cli.main(args + ["--overwrite", "--set", "train.epochz=1"]) == 2
  assert "train.epochz" in capsys.readouterr().err


@pytest.mark.parametrize("override, message", [
    ("model=nope", "unknown model"), ("train.coordination=maybe", "train.coordination"),
    ("optim.learning_rate=fast", "optim.learning_rate"), ("task=staging", "task")])
def test_config_errors_name_the_key(override, message, tiny_spec, data_dir, tmp_path):
  with pytest.raises((ConfigError, ValueError), match=message):
    config = make_config({"data": {"data": str(tiny_spec), "data_dir": data_dir}},
                         overrides=[override])
    train(config, tmp_path / "bad", log=lambda _: None)
