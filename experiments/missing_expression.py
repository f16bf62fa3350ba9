"""Missing expression experiments on a synthetic cohort: `python -m experiments.missing_expression`.

`robustness`: test AUC (full test inputs) of `subspace` trained with a fraction of the training
patients' expression dropped (`data.drop_expression`), per fraction and seed, with `abmil` and
`subspace-student` (distilled from the seed's fraction-0 run; `distill.feature_weight` chosen on
validation among --feature-weights) as reference lines. `survival`: C-index of `subspace` with
the batch C-index vs the confidence coordination score, per seed. Every number is the test
metric at the validation-selected epoch; the table gives mean +- std over seeds. Writes
<out>/results.json, <out>/table.md and, for robustness, <out>/sweep.json and <out>/robustness.png
(`smml_jax.evaluate.missing_expression_study`).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Sequence

from smml_jax.evaluate import missing_expression_study as study


def _numbers(kind: type, flag: str):
  def parse(text: str) -> tuple:
    try:
      return tuple(kind(v) for v in text.split(",") if v.strip())
    except ValueError:
      raise argparse.ArgumentTypeError(f"{flag} {text!r}: expected comma-separated {kind.__name__} values") from None

  return parse


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="python -m experiments.missing_expression",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument("study", choices=study.STUDIES)
  p.add_argument("--out", required=True, help="folder for the runs and the results")
  p.add_argument("--seeds", type=_numbers(int, "--seeds"), default=(0, 1, 2))
  p.add_argument(
    "--fractions",
    type=_numbers(float, "--fractions"),
    default=(0.0, 0.25, 0.5, 0.75, 1.0),
    help="robustness: drop fractions",
  )
  p.add_argument(
    "--references",
    type=lambda t: tuple(v for v in t.split(",") if v),
    default=study.REFERENCES,
    help="robustness: WSI-only reference lines (comma-separated; '' for none)",
  )
  p.add_argument(
    "--feature-weights",
    type=_numbers(float, "--feature-weights"),
    default=study.FEATURE_WEIGHTS,
    help="robustness: the student's distill.feature_weight candidates",
  )
  p.add_argument("--epochs", type=int, default=6)
  p.add_argument("--data-dir", help="where cohort records are written (default: user cache)")
  return p


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  settings = study.StudySettings(
    study=args.study,
    out=pathlib.Path(args.out),
    seeds=args.seeds,
    fractions=args.fractions,
    epochs=args.epochs,
    data_dir=args.data_dir,
    references=args.references,
    feature_weights=args.feature_weights,
  )
  try:
    study.run_study(settings, log=lambda line: print(line, flush=True))
  except study.StudyError as e:
    print(f"missing_expression: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
