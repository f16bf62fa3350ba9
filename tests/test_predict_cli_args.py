"""experiments.predict refuses incomplete arguments before loading anything (the fast CLI test;
the end-to-end predictions on a trained run are in test_predict.py, marked slow)."""

import pytest

from experiments import predict as predict_cli


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


def test_a_missing_run_directory_is_named(tmp_path, capsys):
  run = tmp_path / "no_such_run"
  assert predict_cli.main(["--run", str(run), "--input", "synthetic",
                           "--out", str(tmp_path / "out")]) == 2
  err = capsys.readouterr().err
  assert "no_such_run" in err
  assert not (tmp_path / "out").exists() and not run.exists()
