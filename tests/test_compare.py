"""experiments.compare end to end (--quick) and the aggregation in smml_jax.evaluate.comparison."""

from __future__ import annotations

import json
import math
import pathlib
import sys
import types

import numpy as np
import pandas as pd
import pytest

from experiments import compare
from smml_jax.evaluate import comparison, comparison_runner

QUICK_MODELS = ("abmil", "snn")


def _cell(model, fold, auc, acc=0.5, f1=0.5, seed=0, n_params=10, speed=2.0):
  return comparison.CellResult(
    model=model,
    fold=fold,
    seed=seed,
    run_dir=pathlib.Path("/nowhere"),
    test_metrics={"auc": auc, "accuracy": acc, "f1": f1},
    best_epoch=0,
    n_params=n_params,
    slides_per_s=speed,
    wall_s=3.0,
    predictions=(
      {
        "slide_id": f"s{fold}",
        "patient_id": f"p{fold}",
        "label": 1,
        "prob_0": 0.2,
        "prob_1": 0.5,
        "prob_2": 0.3,
        "pred": 1,
      },
    ),
  )


def test_aggregate_uses_sample_std_and_skips_undefined_metrics():
  cells = [_cell("a", 0, 0.6), _cell("a", 1, 0.8), _cell("a", 2, None), _cell("b", 0, 0.7)]
  table = comparison.aggregate(cells, "grading")
  assert list(table.columns) == list(comparison.RESULT_COLUMNS)
  auc_a = table[(table.model == "a") & (table.metric == "auc")].iloc[0]
  assert auc_a["mean"] == pytest.approx(0.7)
  assert auc_a["std"] == pytest.approx(math.sqrt(0.02))  # ddof=1 over (0.6, 0.8)
  assert auc_a["n_folds"] == 2  # the cell with an undefined AUC does not count
  assert table[(table.model == "a") & (table.metric == "f1")].iloc[0]["n_folds"] == 3
  auc_b = table[(table.model == "b") & (table.metric == "auc")].iloc[0]
  assert auc_b["n_folds"] == 1 and math.isnan(auc_b["std"])
  assert set(table.metric) == {"auc", "accuracy", "f1"}


def test_survival_comparison_reports_c_index_only():
  cell = comparison.CellResult("a", 0, 0, pathlib.Path("/x"), {"c_index": 0.61}, 0, None, None, None, ())
  table = comparison.aggregate([cell], "survival")
  assert table.metric.tolist() == ["c_index"] and table["mean"].iloc[0] == pytest.approx(0.61)


def test_markdown_lists_each_model_with_mean_std_params_and_throughput():
  cells = [_cell("a", 0, 0.6, n_params=12345), _cell("a", 1, 0.8, n_params=12345), _cell("b", 0, 0.7, speed=4.0)]
  text = comparison.markdown_table(comparison.aggregate(cells, "grading"), cells, "grading", ["b", "a"])
  rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
  assert [r.split("|")[1].strip() for r in rows] == ["model", "b", "a"]
  assert "0.700 ± 0.141" in rows[2] and "12.3k" in rows[2]
  assert "4.0" in rows[1]


def test_read_cell_names_the_missing_file(tmp_path):
  with pytest.raises(comparison.ComparisonError, match="summary.json"):
    comparison.read_cell(tmp_path, "abmil", 0, 0, "grading")
  (tmp_path / "summary.json").write_text(json.dumps({"test": None, "selection_metric": "auc"}))
  with pytest.raises(comparison.ComparisonError, match="'test'"):
    comparison.read_cell(tmp_path, "abmil", 0, 0, "grading")


def test_protocols():
  assert comparison_runner.parse_protocol("kfold3") == {"split": "kfold", "n_folds": 3}
  assert comparison_runner.parse_protocol("original") == {"split": "original"}
  for bad in ("kfold1", "kfold", "5fold", "pnas15"):
    with pytest.raises(comparison_runner.CompareError, match="kfoldN"):
      comparison_runner.parse_protocol(bad)


def test_cell_config_layers_compare_config_and_overrides():
  settings = compare.settings(compare.build_parser().parse_args(["--out", "x", "--quick", "--set", "train.epochs=3"]))
  configs = comparison_runner.compare_configs(settings)
  config = comparison_runner.cell_config(settings, configs, "subspace", {"split": "kfold", "n_folds": 3}, 2, 7)
  assert (config.model, config.data.split, config.data.n_folds, config.data.fold, config.train.seed) == (
    "subspace",
    "kfold",
    3,
    2,
    7,
  )
  assert config.train.epochs == 3  # --set wins over the quick layer's 1 epoch
  assert config.model_options["dim"] == 8  # quick model layer
  assert pathlib.Path(config.data.data).is_absolute()  # resolved from the config folder
  plain = compare.settings(compare.build_parser().parse_args(["--out", "x"]))
  default = comparison_runner.cell_config(
    plain, comparison_runner.compare_configs(plain), "abmil", {"split": "kfold", "n_folds": 3}, 0, 0
  )
  assert default.data.data == "synthetic" and not default.train.progress


def test_bad_arguments_fail_with_clear_errors(tmp_path, capsys):
  out = str(tmp_path / "c")
  assert compare.main(["--out", out, "--models", "abmil,nope"]) == 2
  assert "nope" in capsys.readouterr().err
  assert compare.main(["--out", out, "--models", "abmil", "--folds", "5"]) == 2
  assert "folds" in capsys.readouterr().err
  assert compare.main(["--out", out, "--data-root", "/tmp"]) == 2
  assert "tcga-gbmlgg" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    compare.main(["--out", out, "--cohort", "tcga-gbmlgg", "--protocol", "kfold3"])


def test_genomic_cohort_dispatches_lazily(monkeypatch, tmp_path):
  seen = {}
  fake = types.ModuleType("experiments.compare_genomic")
  fake.run_genomic_compare = lambda args: seen.setdefault("args", args) and 0
  monkeypatch.setitem(sys.modules, "experiments.compare_genomic", fake)
  rc = compare.main(
    [
      "--cohort",
      "tcga-gbmlgg",
      "--data-root",
      str(tmp_path),
      "--protocol",
      "mcat5",
      "--seeds",
      "1,2",
      "--out",
      str(tmp_path / "g"),
    ]
  )
  args = seen["args"]
  assert rc == 0 and args.protocol == "mcat5" and args.seeds == [1, 2]
  assert args.data_root == str(tmp_path)


_GENOMIC = ["--cohort", "tcga-gbmlgg", "--task", "grading", "--models", "snn,linear"]


def test_genomic_flags_reach_the_study_settings(tmp_path):
  from smml_jax.evaluate import genomic_study

  args = compare.build_parser().parse_args(
    _GENOMIC
    + [
      "--protocol",
      "pnas15",
      "--data-root",
      str(tmp_path),
      "--out",
      str(tmp_path / "g"),
      "--source",
      "pnas",
      "--splits",
      "1,3",
      "--batch-size",
      "4",
      "--learning-rate",
      "0.01",
      "--epochs",
      "3",
    ]
  )
  got = genomic_study.settings_from(args)
  assert (got["source"], got["splits"], got["batch_size"], got["learning_rate"], got["epochs"]) == (
    args.source,
    [1, 3],
    args.batch_size,
    args.learning_rate,
    args.epochs,
  )


@pytest.mark.parametrize(
  "flag, value, expected",
  [
    ("--epochs", "0", "at least 1"),
    ("--batch-size", "0", "at least 1"),
    ("--learning-rate", "0", "positive"),
    ("--learning-rate", "nan", "positive"),
  ],
)
def test_a_genomic_setting_out_of_range_is_refused(tmp_path, capsys, flag, value, expected):
  out = tmp_path / "g"
  argv = _GENOMIC + ["--protocol", "mcat5", "--data-root", str(tmp_path), "--out", str(out)]
  assert compare.main(argv + [flag, value]) == 2
  err = capsys.readouterr().err
  assert flag in err and expected in err and value in err
  assert not out.exists()


def test_the_genomic_study_needs_a_data_root(tmp_path, capsys):
  out = tmp_path / "g"
  assert compare.main(_GENOMIC + ["--protocol", "mcat5", "--out", str(out)]) == 2
  assert "--data-root: expected the folder" in capsys.readouterr().err
  assert not out.exists()


@pytest.mark.parametrize(
  "cohort, flag, instead",
  [
    ("tcga-gbmlgg", ["--folds", "0"], "--splits"),
    ("tcga-gbmlgg", ["--set", "train.epochs=3"], "--epochs"),
    ("tcga-gbmlgg", ["--config", "x.yaml"], "synthetic"),
    ("tcga-gbmlgg", ["--compare-config", "x.yaml"], "synthetic"),
    ("tcga-gbmlgg", ["--data-dir", "d"], "synthetic"),
    ("tcga-gbmlgg", ["--overwrite"], "rewrites"),
    ("synthetic", ["--splits", "0"], "--folds"),
    ("synthetic", ["--source", "pnas"], "tcga-gbmlgg"),
    ("synthetic", ["--epochs", "3"], "--set train.epochs=3"),
    ("synthetic", ["--batch-size", "4"], "--set train.batch_size=4"),
    ("synthetic", ["--learning-rate", "0.1"], "--set optim.learning_rate=0.1"),
  ],
)
def test_a_flag_the_cohort_does_not_read_is_refused(tmp_path, capsys, cohort, flag, instead):
  out = tmp_path / "c"
  argv = ["--cohort", cohort, "--out", str(out)]
  if cohort == "tcga-gbmlgg":
    argv += ["--task", "grading", "--protocol", "mcat5", "--data-root", str(tmp_path)]
  assert compare.main(argv + flag) == 2
  err = capsys.readouterr().err
  assert flag[0] in err and instead in err and cohort in err
  assert not out.exists()


def _mtimes(out: pathlib.Path) -> dict[str, float]:
  return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in (out / "runs").rglob("*.json")}


@pytest.mark.slow
def test_quick_comparison_end_to_end_and_resumes(tmp_path, capsys):
  out, data_dir = tmp_path / "cmp", tmp_path / "data"
  argv = [
    "--quick",
    "--task",
    "grading",
    "--models",
    ",".join(QUICK_MODELS),
    "--protocol",
    "kfold2",
    "--out",
    str(out),
    "--data-dir",
    str(data_dir),
  ]
  assert compare.main(argv) == 0
  first = capsys.readouterr().out
  assert f"{len(QUICK_MODELS) * 2} trained, 0 resumed, 0 skipped" in first
  assert f"[compare 1/{len(QUICK_MODELS) * 2}]" in first and "ETA" in first

  results = pd.read_csv(out / "results.csv")
  assert list(results.columns) == ["model", "task", "metric", "mean", "std", "n_folds"]
  assert sorted(results.model.unique()) == sorted(QUICK_MODELS)
  assert set(results.metric) == {"auc", "accuracy", "f1"} and set(results.task) == {"grading"}
  assert (results[results.metric == "accuracy"].n_folds == 2).all()
  for model in QUICK_MODELS:  # the table's means are the cells' summary.json test metrics
    accs = [
      json.loads((comparison.cell_dir(out, model, k, 0) / "summary.json").read_text())["test"]["accuracy"]
      for k in (0, 1)
    ]
    row = results[(results.model == model) & (results.metric == "accuracy")].iloc[0]
    assert row["mean"] == pytest.approx(np.mean(accs))
    assert row["std"] == pytest.approx(np.std(accs, ddof=1))

  table = (out / "results.md").read_text()
  for model in QUICK_MODELS:
    assert any(line.startswith(f"| {model} |") for line in table.splitlines())

  preds = pd.read_csv(out / "predictions.csv")
  for model in QUICK_MODELS:
    for fold in (0, 1):
      cohort = json.loads((comparison.cell_dir(out, model, fold, 0) / "cohort.json").read_text())
      mine = preds[(preds.model == model) & (preds.fold == fold)]
      assert sorted(mine.slide_id) == sorted(cohort["splits"]["test"])
  # Folds are patient-disjoint test sets covering different slides.
  folds = [set(preds[(preds.model == QUICK_MODELS[0]) & (preds.fold == k)].slide_id) for k in (0, 1)]
  assert folds[0] and folds[1] and not folds[0] & folds[1]

  before = _mtimes(out)
  assert compare.main(argv) == 0
  second = capsys.readouterr().out
  assert f"0 trained, 0 resumed, {len(QUICK_MODELS) * 2} skipped" in second
  assert _mtimes(out) == before  # nothing in any run directory was rewritten

  # An interrupted cell (no summary.json) continues from its checkpoint; the others stay put.
  interrupted = comparison.cell_dir(out, QUICK_MODELS[1], 1, 0)
  (interrupted / "summary.json").unlink()
  assert compare.main(argv) == 0
  assert f"0 trained, 1 resumed, {len(QUICK_MODELS) * 2 - 1} skipped" in capsys.readouterr().out
  assert (interrupted / "summary.json").exists()
  after = _mtimes(out)
  assert {k: v for k, v in after.items() if not k.startswith(str(interrupted.relative_to(out)))} == {
    k: v for k, v in before.items() if not k.startswith(str(interrupted.relative_to(out)))
  }

  # A changed config refuses to mix with the stored cells.
  assert compare.main(argv + ["--set", "train.epochs=2"]) == 2
  assert "train.epochs: stored 1, now 2" in capsys.readouterr().err


def test_eta_from_the_runs_so_far():
  assert comparison_runner.eta([], 3) == ""  # nothing measured yet
  assert comparison_runner.eta([10.0, 20.0], 4) == "ETA 1m00s"
  assert comparison_runner.eta([3600.0], 2) == "ETA 2h00m"
  assert comparison_runner.eta([5.0], 0) == "ETA 0s"
