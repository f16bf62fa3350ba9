"""Fast tests, in the developer loop, of the command lines whose end-to-end tests are slow:
experiments.predict and experiments.report refuse bad arguments before loading or writing anything
(end to end: test_predict.py, test_report_cli.py), and scripts/launch_local.py starts its
processes (with JAX: test_benchmark_throughput.py, test_distributed.py)."""

import pytest

from experiments import predict as predict_cli
from experiments import report as report_cli


@pytest.mark.parametrize(
  "extra,message",
  [
    ([], "nothing to predict: give --input"),
    (["--genes", "g.tsv"], "--genes needs the slide's --features"),
    (["--features", "slide.h5", "--without-expression"], "--without-expression applies to --input"),
    (["--input", "synthetic", "--genes", "g.tsv"], "give either --input (a cohort) or --features"),
  ],
)
def test_incomplete_arguments_are_refused_naming_what_is_missing(tmp_path, capsys, extra, message):
  run = tmp_path / "run"
  assert predict_cli.main(["--run", str(run), "--out", str(tmp_path / "out"), *extra]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and message in err
  assert not (tmp_path / "out").exists() and not run.exists()


def test_predict_names_a_missing_run_directory(tmp_path, capsys):
  run = tmp_path / "no_such_run"
  assert predict_cli.main(["--run", str(run), "--input", "synthetic", "--out", str(tmp_path / "out")]) == 2
  err = capsys.readouterr().err
  assert "no_such_run" in err
  assert not (tmp_path / "out").exists() and not run.exists()


def test_report_names_a_missing_run_directory_and_writes_nothing(tmp_path, capsys):
  run = tmp_path / "no_such_run"
  assert report_cli.main(["--run", str(run), "--out", str(tmp_path / "report"), "--no-progress"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and "no_such_run" in err
  assert not (tmp_path / "report").exists() and not run.exists()


def test_launch_local_script_gives_each_process_its_id_and_logs(tmp_path):
  # The launcher end to end with children that import nothing; the JAX multi-process runs
  # through it are in test_benchmark_throughput.py and test_distributed.py (slow).
  import pathlib
  import subprocess
  import sys

  script = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "launch_local.py"
  child = (
    "import os; print('process', os.environ['SMML_PROCESS_ID'], 'of', "
    "os.environ['SMML_NUM_PROCESSES'], os.environ['XLA_FLAGS'])"
  )
  proc = subprocess.run(
    [
      sys.executable,
      str(script),
      "-n",
      "2",
      "--devices-per-process",
      "3",
      "--log-dir",
      str(tmp_path),
      "--",
      sys.executable,
      "-c",
      child,
    ],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout == "process 0 of 2 --xla_force_host_platform_device_count=3\n"
  assert (tmp_path / "process_1.log").read_text() == ("process 1 of 2 --xla_force_host_platform_device_count=3\n")
