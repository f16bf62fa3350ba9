"""Compare models across folds: `python -m experiments.compare --task grading --out DIR`.

Trains every (model, fold, seed) cell into `DIR/runs/<model>/fold<k>-seed<s>/` and aggregates the
cells' test metrics (at the epoch selected on VALIDATION) into DIR/results.csv, DIR/results.md and
DIR/predictions.csv (`smml_jax.evaluate.comparison_runner.run_compare`).

Config layers per cell (later wins): experiments/configs/<task>.yaml, the comparison config
(experiments/configs/compare_<task>.yaml: its `run` layer, then `model_layers.<model>`), with
--quick experiments/configs/compare_quick.yaml the same way, --config files, the cell's model,
split, fold and seed, and last --set overrides.

Resumable: a cell whose summary.json exists is not retrained (its stored config must match); a
cell that was interrupted continues from its latest checkpoint.

`--cohort tcga-gbmlgg` hands over to experiments.compare_genomic.run_genomic_compare(args), with
--source, --splits, --epochs, --batch-size and --learning-rate; a flag that the chosen cohort does
not read (e.g. --folds or --set with tcga-gbmlgg, --splits with synthetic) is refused.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Sequence

from smml_jax.data import tcga_gbmlgg
from smml_jax.data.labels import TASK_NUM_CLASSES

CONFIG_DIR = pathlib.Path(__file__).resolve().parent / "configs"
COHORTS = ("synthetic", "tcga-gbmlgg")
GENOMIC_PROTOCOLS = ("pnas15", "mcat5")


def _comma_list(text: str) -> list[str]:
  items = [t.strip() for t in text.split(",") if t.strip()]
  if not items:
    raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
  return items


def _int_list(text: str) -> list[int]:
  try:
    return [int(t) for t in _comma_list(text)]
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="python -m experiments.compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--task", default="grading", choices=sorted(TASK_NUM_CLASSES))
  p.add_argument("--models", type=_comma_list, help="comma list of model names (default: the comparison config's list)")
  p.add_argument(
    "--cohort",
    default="synthetic",
    choices=COHORTS,
    help="'synthetic' (embedded cohort, default) or 'tcga-gbmlgg' (real genomic tables; see README)",
  )
  p.add_argument(
    "--protocol",
    help="synthetic: 'kfoldN' (patient-level stratified N-fold, default kfold3) or "
    "'original' (one seeded 80/10/10 split); tcga-gbmlgg: pnas15 or mcat5",
  )
  p.add_argument("--folds", type=_int_list, help="run only these folds (comma list)")
  p.add_argument("--seeds", type=_int_list, help="training seeds (comma list, default 0)")
  p.add_argument("--out", required=True, help="comparison directory")
  p.add_argument("--data-root", help="tcga-gbmlgg: folder holding the public TCGA tables")
  p.add_argument("--data-dir", help="where synthetic cohort records are written")
  p.add_argument("--compare-config", help="comparison config (default experiments/configs/compare_<task>.yaml)")
  p.add_argument("--quick", action="store_true", help="CI smoke run: tiny cohort, tiny models, one epoch")
  p.add_argument("--config", action="append", default=[], help="extra run-config layer (YAML)")
  p.add_argument(
    "--set",
    action="append",
    default=[],
    metavar="KEY=VALUE",
    help="override a run-config key in every cell, e.g. --set train.epochs=5",
  )
  p.add_argument(
    "--overwrite", action="store_true", help="retrain cells whose stored config differs instead of failing"
  )
  genomic = p.add_argument_group("tcga-gbmlgg only (smml_jax.evaluate.genomic_study)")
  genomic.add_argument(
    "--source", choices=("auto",) + tcga_gbmlgg.SOURCES, help="which table feeds the models (default auto)"
  )
  genomic.add_argument(
    "--splits", type=_int_list, help="0-based split/fold indices of the protocol (comma list, default all)"
  )
  genomic.add_argument("--epochs", type=int, help="training epochs (default: the protocol's)")
  genomic.add_argument("--batch-size", type=int, help="patients per batch (default: the study's)")
  genomic.add_argument("--learning-rate", type=float, help="Adam learning rate (default: the study's)")
  return p


# Flags that one cohort reads and the other does not (argparse attribute -> what to do instead):
# given with the other cohort they would be ignored, so they are refused.
_STUDY_FLAGS = "the study has no run configs; its settings are --epochs, --batch-size, --learning-rate"
_SYNTHETIC_ONLY = {
  "folds": "give --splits (0-based split indices of the protocol)",
  "data_dir": "the study reads --data-root and writes no cohort records",
  "compare_config": _STUDY_FLAGS,
  "config": _STUDY_FLAGS,
  "set": _STUDY_FLAGS,
  "overwrite": "the study rewrites its tables in --out on every run",
}
_GENOMIC_ONLY = {
  "data_root": "the synthetic cohort is embedded",
  "source": "the synthetic cohort has one table",
  "splits": "give --folds",
  "epochs": "give --set train.epochs={}",
  "batch_size": "give --set train.batch_size={}",
  "learning_rate": "give --set optim.learning_rate={}",
}


def unread_flag(args: argparse.Namespace) -> str | None:
  """The error for the first given flag that `args.cohort` does not read (None if there is none)."""
  other, foreign = ("tcga-gbmlgg", _GENOMIC_ONLY) if args.cohort == "synthetic" else ("synthetic", _SYNTHETIC_ONLY)
  for name, instead in foreign.items():
    value = getattr(args, name)
    if value is None or value is False or value == []:
      continue
    flag = "--" + name.replace("_", "-")
    return f"{flag} applies to --cohort {other} only, not --cohort {args.cohort}: {instead.format(value)}"
  return None


def settings(args: argparse.Namespace):
  """The parsed flags of a synthetic / spec-file comparison -> its `CompareSettings`."""
  from smml_jax.evaluate.comparison_runner import CompareSettings

  return CompareSettings(
    task=args.task,
    out=pathlib.Path(args.out),
    config_dir=CONFIG_DIR,
    models=args.models,
    protocol=args.protocol,
    folds=args.folds,
    seeds=args.seeds,
    compare_config=args.compare_config,
    quick=args.quick,
    config_files=tuple(args.config),
    overrides=tuple(args.set),
    data_dir=args.data_dir,
    overwrite=args.overwrite,
    cohort=args.cohort,
  )


def main(argv: Sequence[str] | None = None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  if unread := unread_flag(args):
    print(f"error: {unread}", file=sys.stderr)
    return 2
  if args.cohort == "tcga-gbmlgg":
    if args.protocol is not None and args.protocol not in GENOMIC_PROTOCOLS:
      parser.error(f"--protocol {args.protocol!r}: --cohort tcga-gbmlgg takes one of {GENOMIC_PROTOCOLS}")
    from .compare_genomic import run_genomic_compare

    return run_genomic_compare(args)
  from smml_jax.data.errors import CohortError
  from smml_jax.evaluate.comparison import ComparisonError
  from smml_jax.evaluate.comparison_runner import CompareError, run_compare
  from smml_jax.train.checkpoints import CheckpointError
  from smml_jax.train.config import ConfigError
  from smml_jax.train.loop import TrainingDiverged
  from smml_jax.train.run_dir import RunDirError

  try:
    run_compare(settings(args))
  except (CompareError, ComparisonError, ConfigError, RunDirError, CohortError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except (TrainingDiverged, CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 3
  return 0


if __name__ == "__main__":
  sys.exit(main())
