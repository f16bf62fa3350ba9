"""TCGA GBM-LGG genomics-only comparison on the published splits (CLI).

  python -m experiments.compare_genomic --task grading --models snn,subspace-genomic,linear \
      --protocol pnas15 --data-root ../shared/data --out runs/gbmlgg-grading-pnas15

(`python -m experiments.compare --cohort tcga-gbmlgg ...` dispatches here.) The study itself (models,
protocols, sources, output files) is `smml_jax.evaluate.genomic_study`; this module parses the
arguments and calls `genomic_study.run_study`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from smml_jax.data import splits as splits_lib, tcga_gbmlgg
from smml_jax.data.errors import CohortError
from smml_jax.evaluate import genomic_study as study


def add_genomic_args(parser: argparse.ArgumentParser) -> None:
  """Adds this comparison's flags (`experiments.compare` declares the same ones for its
  `--cohort tcga-gbmlgg`)."""
  parser.add_argument("--task", required=True, choices=tcga_gbmlgg.TASKS)
  parser.add_argument("--models", default=",".join(study.MODELS), help=f"comma-separated, from {study.MODELS}")
  parser.add_argument("--protocol", required=True, choices=sorted(splits_lib.PROTOCOLS))
  parser.add_argument("--data-root", required=True, help="folder laid out like ../shared/data")
  parser.add_argument("--out", required=True, help="output folder")
  parser.add_argument("--seeds", default=None, help="comma-separated seeds (default 0)")
  parser.add_argument(
    "--quick", action="store_true", help=f"CI slice: {study.QUICK_SPLITS} splits, {study.QUICK_EPOCHS} epochs"
  )
  parser.add_argument("--epochs", type=int, default=None, help=f"training epochs (default {study.DEFAULT_EPOCHS})")
  parser.add_argument(
    "--source",
    default="auto",
    choices=("auto",) + tcga_gbmlgg.SOURCES,
    help="which table feeds the models (see smml_jax.evaluate.genomic_study)",
  )
  parser.add_argument("--splits", default=None, help="comma-separated 0-based split/fold indices (default all)")
  parser.add_argument("--batch-size", type=int, default=study.DEFAULT_BATCH_SIZE)
  parser.add_argument("--learning-rate", type=float, default=study.DEFAULT_LEARNING_RATE)


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="python -m experiments.compare_genomic",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  add_genomic_args(p)
  return p


def run_genomic_compare(args) -> int:
  """Runs the study `args` describes (see `add_genomic_args`); returns the exit code."""
  try:
    settings = study.settings_from(args)
    results = study.run_study(settings, log=lambda line: print(line, flush=True))
  except (study.CompareError, tcga_gbmlgg.GBMLGGDataError, CohortError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  import pandas as pd

  with pd.option_context("display.width", 120, "display.precision", 4):
    print(results.to_string(index=False))
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  return run_genomic_compare(build_parser().parse_args(argv))


if __name__ == "__main__":
  sys.exit(main())
