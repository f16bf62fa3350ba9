"""The CLIs whose end-to-end tests train a run (marked slow) refuse bad arguments before loading
or writing anything: their fast tests in the developer loop. End to end: test_predict.py
(experiments.predict) and test_report_cli.py (experiments.report)."""

import pytest

from experiments import predict as predict_cli
from experiments import report as report_cli


@pytest.mark.parametrize("extra,message", [
    ([], "nothing to predict: give --input"),
    (["--features", "slide.h5"], "one slide needs both --features and --genes"),
    (["--input", "synthetic", "--genes", "g.tsv"], "give either --input (a cohort) or --features"),
])
def test_incomplete_arguments_are_refused_naming_what_is_missing(tmp_path, capsys, extra,
                                                                 message):
  run = tmp_path / "run"
  assert predict_cli.main(["--run", str(run), "--out", str(tmp_path / "out"), *extra]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and message in err
  assert not (tmp_path / "out").exists() and not run.exists()


def test_predict_names_a_missing_run_directory(tmp_path, capsys):
  run = tmp_path / "no_such_run"
  assert predict_cli.main(["--run", str(run), "--input", "synthetic",
                           "--out", str(tmp_path / "out")]) == 2
  err = capsys.readouterr().err
  assert "no_such_run" in err
  assert not (tmp_path / "out").exists() and not run.exists()


def test_report_names_a_missing_run_directory_and_writes_nothing(tmp_path, capsys):
  run = tmp_path / "no_such_run"
  assert report_cli.main(["--run", str(run), "--out", str(tmp_path / "report"),
                          "--no-progress"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and "no_such_run" in err
  assert not (tmp_path / "report").exists() and not run.exists()
