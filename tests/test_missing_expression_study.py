"""The missing-expression study (smml_jax.evaluate.missing_expression_study): its run plan, the
WSI-only reference lines in the table and the figure, and the validation-only choice of the
student's distill.feature_weight. The trainer is replaced by one that writes a run's summary
(the real runs are the study's documented reduced protocol); every config is still built and
checked by make_config."""

import json
import pathlib

import numpy as np
import pytest

from experiments import missing_expression as cli
from smml_jax.evaluate import missing_expression_study as study
from smml_jax.evaluate.figures.robustness import robustness_figure


class _SummaryTrainer:
  """train.loop.train's contract for the study: writes <run_dir>/summary.json and returns it.

  Validation AUC grows with the student's feature_weight while test AUC falls with it, so a
  choice that read the test metric would pick another weight."""

  def __init__(self, val_nan_for: str = ""):
    self.calls = []
    self.val_nan_for = val_nan_for

  def __call__(self, config, run_dir, *, overwrite, log):
    run_dir = pathlib.Path(run_dir)
    self.calls.append((run_dir.name, config))
    w = config.distill.feature_weight if config.distill.teacher else 0.0
    seed = config.train.seed
    val = float("nan") if run_dir.name == self.val_nan_for else 0.5 + 0.1 * w + 0.01 * seed
    summary = {
      "selection_metric": "auc",
      "best_epoch": 0,
      "val": {"auc": val},
      "test": {"auc": 0.9 - 0.1 * w - 0.02 * seed - config.data.drop_expression / 10},
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return summary


def _settings(tmp_path, **kw):
  return study.StudySettings(
    **{"study": "robustness", "out": tmp_path / "out", "seeds": (0, 1), "fractions": (0.5, 0.0), "epochs": 1, **kw}
  )


def test_each_student_learns_from_its_seeds_fraction_zero_run_trained_before_it(tmp_path):
  s = _settings(tmp_path)
  runs = study.plan(s)
  order = [r.dir_name for r in runs]
  assert order[:4] == ["drop0-seed0", "drop0-seed1", "drop0.5-seed0", "drop0.5-seed1"]
  students = [r for r in runs if r.group == "sweep"]
  assert sorted({r.value for r in students}) == [0.01, 0.1, 1.0]
  assert len(students) == 3 * 2 and {r.name for r in runs if r.group == "reference"} == {"abmil"}
  spec = tmp_path / "cohort.yaml"
  spec.write_text(json.dumps(study.COHORT))
  for r in students:
    teacher = s.out / f"drop0-seed{r.seed}"
    assert order.index(teacher.name) < order.index(r.dir_name)
    config = study.run_config(s, r, spec)
    assert config.distill.teacher == str(teacher) and config.distill.feature_weight == r.value
    assert config.distill.kd_weight == study.run_config(s, students[0], spec).distill.kd_weight
    teacher_config = study.run_config(s, runs[order.index(teacher.name)], spec)
    assert config.data == teacher_config.data and config.train.seed == teacher_config.train.seed


@pytest.mark.parametrize(
  "kw, match",
  [
    ({"fractions": (0.5, 1.0)}, "include 0"),
    ({"references": ("mcat",)}, "references"),
    ({"fractions": (0.0, 1.5)}, "fractions"),
    ({"feature_weights": (0.1, -1.0)}, "feature_weights"),
    ({"seeds": ()}, "seeds"),
  ],
)
def test_bad_settings_are_refused_before_anything_is_written(tmp_path, kw, match):
  trainer = _SummaryTrainer()
  with pytest.raises(study.StudyError, match=match):
    study.run_study(_settings(tmp_path, **kw), train_fn=trainer, log=lambda _: None)
  assert not (tmp_path / "out").exists() and not trainer.calls


def test_a_bad_value_on_the_command_line_exits_2_naming_it(tmp_path, capsys):
  assert cli.main(["robustness", "--out", str(tmp_path / "o"), "--fractions", "0.5,1"]) == 2
  assert "include 0" in capsys.readouterr().err and not (tmp_path / "o").exists()
  args = cli.build_parser().parse_args(["robustness", "--out", "x", "--references", "", "--feature-weights", "0.1,1"])
  assert args.references == () and args.feature_weights == (0.1, 1.0)


def test_selection_reads_validation_only():
  candidates = {
    0.01: [{"val": 0.6}, {"val": 0.7}],
    0.1: [{"val": 0.8}, {"val": 0.4}],
    1.0: [{"val": 0.5}, {"val": 0.5}],
  }  # no test values at all: none can be read
  chosen, means = study.select_on_validation(candidates)
  assert chosen == 0.01 and means[0.1] == pytest.approx(0.6)
  tie = {0.1: [{"val": 0.7}], 1.0: [{"val": 0.7}]}
  assert study.select_on_validation(tie)[0] == 0.1  # ties: the first candidate given


def test_study_table_and_figure_carry_the_reference_lines_and_the_chosen_student(tmp_path):
  trainer = _SummaryTrainer()
  s = _settings(tmp_path)
  results = study.run_study(s, train_fn=trainer, log=lambda _: None)
  out = s.out
  assert list(results) == ["drop0", "drop0.5", "abmil", study.STUDENT]
  sweep = json.loads((out / "sweep.json").read_text())
  assert sweep["chosen"] == 1.0  # the highest validation AUC, the lowest test AUC
  assert all("test" not in row for rows in sweep["candidates"].values() for row in rows)
  chosen = [json.loads((out / f"{study.STUDENT}-fw1-seed{k}" / "summary.json").read_text()) for k in (0, 1)]
  assert [r["test"] for r in results[study.STUDENT]] == [c["test"]["auc"] for c in chosen]
  assert json.loads((out / "results.json").read_text()) == results
  text = (out / "table.md").read_text()
  assert "| abmil (slides only, reference) |" in text and f"| {study.STUDENT} (slides only" in text
  assert "| 1 | auc" in text and "**yes**" in text
  for name in ("abmil", study.STUDENT):  # one ± std band per reference line
    mean, std = study.mean_std(results[name])
    assert f"{mean:.3f} ± {std:.3f}" in text
  assert (out / "robustness.png").stat().st_size > 0
  curve = [(100 * f, *study.mean_std(results[study.curve_name(f)])) for f in (0.0, 0.5)]
  refs = {n: study.mean_std(results[n]) for n in ("abmil", study.STUDENT)}
  ax = robustness_figure(curve, refs).axes[0]
  labels = [t.get_text() for t in ax.get_legend().get_texts()]
  assert set(labels) == {"abmil (slides only)", f"{study.STUDENT} (slides only)", "subspace (mean ± std over seeds)"}
  flat = [line for line in ax.get_lines() if np.ptp(line.get_ydata()) == 0 and len(line.get_ydata()) == 2]
  np.testing.assert_allclose(sorted(line.get_ydata()[0] for line in flat), sorted(m for m, _ in refs.values()))
  assert len(ax.patches) == 2  # the bands


def test_a_non_finite_validation_metric_stops_the_study(tmp_path):
  s = _settings(tmp_path, references=("abmil",))
  with pytest.raises(study.StudyError, match="abmil-seed1.*non-finite"):
    study.run_study(s, train_fn=_SummaryTrainer(val_nan_for="abmil-seed1"), log=lambda _: None)


def test_a_chosen_run_changed_after_its_validation_was_recorded_stops_the_study(tmp_path):
  trainer = _SummaryTrainer()

  def rewriting(config, run_dir, **kw):  # the fw-1 run of seed 0 is rewritten by the next run
    summary = trainer(config, run_dir, **kw)
    if pathlib.Path(run_dir).name == f"{study.STUDENT}-fw1-seed1":
      stale = tmp_path / "out" / f"{study.STUDENT}-fw1-seed0" / "summary.json"
      stale.write_text(json.dumps({**summary, "val": {"auc": 0.1}}))
    return summary

  with pytest.raises(study.StudyError, match="fw1-seed0.*changed underneath"):
    study.run_study(_settings(tmp_path, references=(study.STUDENT,)), train_fn=rewriting, log=lambda _: None)


def test_a_folder_that_is_not_a_studys_is_refused_and_left_as_it_was(tmp_path):
  out = tmp_path / "out"
  (out / "drop0-seed0").mkdir(parents=True)
  (out / "drop0-seed0" / "mine.txt").write_text("a user's file")
  trainer = _SummaryTrainer()
  with pytest.raises(study.StudyError, match="no cohort.yaml"):
    study.run_study(_settings(tmp_path, references=()), train_fn=trainer, log=lambda _: None)
  assert not trainer.calls and [p.name for p in out.rglob("*")] == ["drop0-seed0", "mine.txt"]
  # An earlier study's folder is rerun in place.
  (out / "drop0-seed0" / "mine.txt").unlink()
  (out / "cohort.yaml").write_text(json.dumps(study.COHORT))
  assert list(study.run_study(_settings(tmp_path, references=()), train_fn=trainer, log=lambda _: None)) == [
    "drop0",
    "drop0.5",
  ]


def test_the_survival_study_compares_the_two_coordination_scores_without_references(tmp_path):
  trainer = _SummaryTrainer()
  s = _settings(tmp_path, study="survival")
  results = study.run_study(s, train_fn=trainer, log=lambda _: None)
  assert list(results) == ["cindex", "confidence"] and len(trainer.calls) == 4
  assert [(c.task, c.train.coordination_score, c.model) for _, c in trainer.calls[::2]] == [
    ("survival", "cindex", "subspace"),
    ("survival", "confidence", "subspace"),
  ]
  assert not (s.out / "sweep.json").exists() and not (s.out / "robustness.png").exists()
