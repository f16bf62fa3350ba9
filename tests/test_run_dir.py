"""The run directory: validation before writing, what --overwrite may remove, resume, paths."""

import pytest
import yaml
from _tiny import TINY_MODEL, cli_args, write_spec

from experiments import run as run_cli
from smml_jax.train import run_dir
from smml_jax.train.config import make_config
from smml_jax.train.loop import train


def _snapshot(folder):
  return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _fake_run(folder, config):
  """What a run writes, without training: marker, records, a checkpoint folder."""
  folder.mkdir()
  run_dir.prepare(folder, run_dir.NEW)
  run_dir.write_start(folder, config, "{}", {"grid_side": 8})
  (folder / run_dir.CHECKPOINTS_DIR / "latest" / "0").mkdir(parents=True)
  (folder / run_dir.METRICS_FILE).write_text("")
  (folder / run_dir.predictions_file("test")).write_text("")
  (folder / run_dir.REPORT_DIR).mkdir()


def test_overwrite_never_touches_a_folder_when_the_spec_is_missing(tmp_path, capsys, monkeypatch):
  """The issue's repro: precious/ held config.json and thesis.txt and was emptied."""
  monkeypatch.chdir(tmp_path)
  precious = tmp_path / "precious"
  precious.mkdir()
  (precious / "config.json").write_text("{}")
  (precious / "thesis.txt").write_text("x")
  before = _snapshot(precious)
  code = run_cli.main(["--task", "grading", "--data", "missing.yaml", "--out", "precious", "--overwrite"])
  assert code == 2
  assert _snapshot(precious) == before
  assert "missing.yaml" in capsys.readouterr().err  # refused at parse time, naming the spec


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
  spec = write_spec(tmp_path / "tiny.yaml")
  precious = tmp_path / "precious"
  precious.mkdir()
  (precious / "config.json").write_text("{}")
  (precious / "thesis.txt").write_text("x")
  before = _snapshot(precious)
  code = run_cli.main(cli_args(spec, precious, tmp_path / "records", "--overwrite"))
  assert code == 2
  assert _snapshot(precious) == before
  err = capsys.readouterr().err
  assert "not a run directory" in err and str(precious) in err
  assert not (tmp_path / "records").exists()  # refused before the cohort was even built


def test_a_fresh_run_refuses_a_non_empty_foreign_folder(tmp_path):
  config = make_config({"task": "grading"})
  folder = tmp_path / "documents"
  folder.mkdir()
  (folder / "notes.txt").write_text("x")
  with pytest.raises(run_dir.RunDirError, match="not a run directory"):
    run_dir.check(folder, config, resume=False, overwrite=False)
  assert run_dir.check(tmp_path / "new", config, resume=False, overwrite=False) == run_dir.NEW
  (tmp_path / "empty").mkdir()
  assert run_dir.check(tmp_path / "empty", config, resume=True, overwrite=False) == run_dir.NEW


def test_overwrite_removes_only_what_a_run_writes(tmp_path):
  config = make_config({"task": "grading"})
  folder = tmp_path / "run"
  _fake_run(folder, config)
  (folder / "my_notes.txt").write_text("keep me")
  (folder / "analysis").mkdir()
  (folder / "analysis" / "plot.png").write_bytes(b"png")
  assert run_dir.is_run_dir(folder)
  assert run_dir.check(folder, config, resume=False, overwrite=True) == run_dir.REPLACE
  removed = {p.name for p in run_dir.prepare(folder, run_dir.REPLACE)}
  assert removed == {
    run_dir.MARKER_FILE,
    run_dir.CONFIG_FILE,
    run_dir.PREPROCESSOR_FILE,
    run_dir.COHORT_FILE,
    run_dir.CHECKPOINTS_DIR,
    run_dir.METRICS_FILE,
    run_dir.predictions_file("test"),
    run_dir.REPORT_DIR,
  }
  assert sorted(p.name for p in folder.iterdir()) == ["analysis", "my_notes.txt", run_dir.MARKER_FILE]
  assert (folder / "my_notes.txt").read_text() == "keep me"
  assert (folder / "analysis" / "plot.png").read_bytes() == b"png"


def test_prepare_refuses_to_replace_a_foreign_folder(tmp_path):
  folder = tmp_path / "precious"
  folder.mkdir()
  (folder / "config.json").write_text("{}")
  with pytest.raises(run_dir.RunDirError, match="nothing removed"):
    run_dir.prepare(folder, run_dir.REPLACE)
  assert (folder / "config.json").read_text() == "{}"


@pytest.mark.parametrize(
  "overrides, message",
  [
    (["--set", "train.epochz=1"], "train.epochz"),
    (["--data", "nowhere.yaml"], "nowhere.yaml"),
    (["--batch-size", "1000"], "batch size"),
    (["--set", "model_options.nope=1"], "nope"),
  ],
)
def test_a_failed_start_writes_nothing_into_out(tmp_path, capsys, overrides, message):
  spec = write_spec(tmp_path / "tiny.yaml")
  out = tmp_path / "out"
  assert run_cli.main(cli_args(spec, out, tmp_path / "records") + overrides) == 2
  assert message in capsys.readouterr().err
  assert not out.exists()


def test_grid_side_below_the_offset_lattice_minimum_is_refused(tmp_path, capsys):
  """grid_side 4 gives a 1 x 1 offset lattice: NaN sampling points and a NaN loss."""
  spec = write_spec(tmp_path / "tiny.yaml", grid_side=4)
  out = tmp_path / "out"
  assert run_cli.main(cli_args(spec, out, tmp_path / "records")) == 2
  err = capsys.readouterr().err
  assert "grid_side 4" in err and "at least 8" in err and "Traceback" not in err
  assert not out.exists()


def test_stored_paths_are_absolute_and_resume_compares_them(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  write_spec(tmp_path / "tiny.yaml")
  config = make_config({"task": "grading", "data": {"data": "tiny.yaml", "data_dir": "records"}})
  folder = tmp_path / "run"
  _fake_run(folder, config)
  stored = run_dir.stored_config(folder)
  assert stored["data"]["data"] == str(tmp_path / "tiny.yaml")
  assert stored["data"]["data_dir"] == str(tmp_path / "records")
  assert run_dir.config_mismatch(folder, config) == ""
  assert run_dir.check(folder, config, resume=True, overwrite=False) == run_dir.RESUME
  record = run_dir.cohort_spec_record(str(tmp_path / "tiny.yaml"))
  assert record["layout"] == "synthetic"
  (tmp_path / "clam.yaml").write_text(yaml.safe_dump({"layout": "clam", "root": "data"}))
  assert run_dir.cohort_spec_record("clam.yaml")["root"] == str(tmp_path / "data")


@pytest.mark.slow
def test_resume_on_an_empty_folder_starts_fresh_and_report_reads_from_any_cwd(tmp_path, monkeypatch):
  from smml_jax.data.spec import load_cohort
  from smml_jax.evaluate import inference as inf

  work = tmp_path / "work"
  work.mkdir()
  monkeypatch.chdir(work)
  write_spec(work / "tiny.yaml")
  (work / "out").mkdir()
  config = make_config(
    {
      "task": "grading",
      "model_options": TINY_MODEL,
      "data": {"data": "tiny.yaml", "data_dir": "records"},
      "train": {"epochs": 1, "batch_size": 8, "eval_batch_size": 8, "progress": False},
    }
  )
  logs = []
  train(config, "out", resume=True, log=logs.append)
  assert any("starting a fresh run" in line for line in logs)
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  monkeypatch.chdir(elsewhere)
  run = inf.load_run(work / "out")
  cohort = load_cohort(run.config.data.data, run.config.data.data_dir)
  assert len(inf.split_indices(run, cohort, "test")) == len(run.splits["test"])
