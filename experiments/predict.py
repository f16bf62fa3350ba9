"""Predict new slides with a trained run: `python -m experiments.predict --run DIR --input ...`.

Inputs: a cohort (`--input synthetic` or a cohort spec YAML/JSON, optionally one of the run's stored
splits with `--split`), or one slide (`--features slide.h5 --genes expression.tsv`). Slides without
expression (`--features` alone, `--without-expression`, or a cohort's slides marked without it) are
predicted by a run that needs slides only (a `subspace-student`, `abmil`) and refused, naming them,
by a run that needs expression; the `inputs` column says what each row used. The run's own
preprocessing (gene order and normalisation, grid layout, survival cut points) is applied.
Writes predictions.csv (one row per slide), patients.csv (slides of one patient averaged) and
predictions.json (both, plus what produced them) to --out (default DIR/predictions/<input name>).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import warnings
from typing import Sequence


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="python -m experiments.predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  where = p.add_mutually_exclusive_group(required=True)
  where.add_argument("--run", help="training run directory (uses checkpoints/<--which>)")
  where.add_argument("--checkpoint", help="a checkpoint folder, e.g. DIR/checkpoints/best")
  p.add_argument(
    "--which",
    choices=("best", "latest"),
    default="best",
    help="which checkpoint of --run (default: best, selected on validation)",
  )
  p.add_argument("--input", help="'synthetic' or a cohort spec file (YAML/JSON)")
  p.add_argument("--data-dir", help="where cohort records are written (default: the run's)")
  p.add_argument(
    "--split",
    default="all",
    choices=("all", "train", "val", "test"),
    help="predict only the run's stored split of the cohort (default: all slides)",
  )
  p.add_argument("--features", help="one slide's HDF5 feature file (Res_feature or features)")
  p.add_argument("--genes", help="that slide's expression: gene/value table or GDC STAR TSV")
  p.add_argument(
    "--without-expression",
    action="store_true",
    help="predict the cohort from its slides alone (needs a slides-only run, e.g. a subspace-student)",
  )
  p.add_argument("--slide-id", help="slide id of --features (default: the file name's stem)")
  p.add_argument("--patient-id", help="patient id of --features (default: the slide id)")
  p.add_argument("--grid-layout", choices=("sample", "coords"), help="override the run's grid layout for --features")
  p.add_argument(
    "--missing-genes",
    choices=("error", "zero"),
    default="error",
    help="features are matched by exact name (modality suffix included; an "
    "expression file's symbols are the _rnaseq features). Run features the input "
    "lacks: error (default, listing them) or zero = fill with the training mean "
    "(the count is printed)",
  )
  p.add_argument("--batch-size", type=int, help="default: the run's eval batch size")
  p.add_argument("--out", help="output folder (default DIR/predictions/<input name>)")
  return p


def predict(args: argparse.Namespace) -> dict[str, pathlib.Path]:
  """The parsed flags -> `smml_jax.evaluate.predict.predict`."""
  from smml_jax.evaluate.predict import CohortInput, InferenceError, SlideInput, predict

  one_slide = args.features is not None or args.genes is not None
  if one_slide and args.input:
    raise InferenceError("give either --input (a cohort) or --features/--genes (one slide)")
  if one_slide and not args.features:
    raise InferenceError("--genes needs the slide's --features")
  if one_slide and args.without_expression:
    raise InferenceError("--without-expression applies to --input cohorts; for one slide leave out --genes")
  if not one_slide and not args.input:
    raise InferenceError("nothing to predict: give --input (a cohort) or --features and --genes (one slide)")
  what = (
    SlideInput(
      args.features, args.genes, slide_id=args.slide_id, patient_id=args.patient_id, grid_layout=args.grid_layout
    )
    if one_slide
    else CohortInput(args.input, data_dir=args.data_dir, split=args.split, without_expression=args.without_expression)
  )
  return predict(
    args.run,
    what,
    which=args.which,
    checkpoint=args.checkpoint,
    missing_genes=args.missing_genes,
    batch_size=args.batch_size,
    out=args.out,
  )


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  from smml_jax.data.errors import CohortError
  from smml_jax.evaluate.inference import InferenceError, MissingGenesFilled
  from smml_jax.train.config import ConfigError

  try:
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always", MissingGenesFilled)
      paths = predict(args)
    for w in caught:  # --missing-genes zero: say how many genes were filled
      if issubclass(w.category, MissingGenesFilled):
        print(f"note: {w.message}", file=sys.stderr)
      else:
        warnings.showwarning(w.message, w.category, w.filename, w.lineno)
  except (InferenceError, CohortError, ConfigError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for path in paths.values():
    print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
