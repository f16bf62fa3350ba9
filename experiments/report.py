"""Interpretability report of a trained run: `python -m experiments.report --run DIR`.

Writes, under DIR/report/ (or --out), per-slide figures of the tumour and microenvironment
sampling points beside the attention mass each patch receives; gene importance per subspace
(integrated gradients of the predicted class probability, or of the risk, w.r.t. the normalised
gene inputs, from the training mean) as bar charts and gene_importance.csv; ROC curves and the
confusion matrix (classification) or Kaplan-Meier curves of the median-split risk groups with the
log-rank p-value and the time-dependent AUC (survival); the training curves of metrics.jsonl;
report_metrics.json; and one self-contained report.html (`smml_jax.evaluate.run_report`).

When the cohort has planted regions (the synthetic cohort's `immune_mask`), it measures how much
more often each branch's sampling points land in them than chance, and how much more of its
attention mass does (`smml_jax.evaluate.sampling.region_concentrations`), beside two content-blind
nulls: the undeformed lattice and the same points scored on another slide's regions.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from smml_jax.evaluate.run_report import ReportOptions


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="python -m experiments.report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--run", required=True, help="training run directory")
  p.add_argument("--out", help="output folder (default DIR/report)")
  p.add_argument("--split", default="test", choices=("train", "val", "test", "all"))
  p.add_argument("--which", choices=("best", "latest"), default="best")
  p.add_argument("--slides", type=int, default=ReportOptions.n_slides, help="slides with a sampling figure")
  p.add_argument(
    "--ig-slides", type=int, default=ReportOptions.ig_slides, help="slides the gene importances average over"
  )
  p.add_argument("--ig-steps", type=int, default=ReportOptions.ig_steps)
  p.add_argument("--top-k", type=int, default=ReportOptions.top_k)
  p.add_argument("--data-dir", help="where cohort records are written (default: the run's)")
  p.add_argument("--no-progress", action="store_true", help="no progress bars")
  return p


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  from smml_jax.data.errors import CohortError
  from smml_jax.evaluate.errors import InferenceError
  from smml_jax.evaluate.run_report import build_report
  from smml_jax.evaluate.sampling import immune_sentence

  options = ReportOptions(
    split=args.split,
    checkpoint=args.which,
    n_slides=args.slides,
    ig_slides=args.ig_slides,
    ig_steps=args.ig_steps,
    top_k=args.top_k,
    data_dir=args.data_dir,
  )
  try:
    metrics = build_report(args.run, options, args.out, progress=not args.no_progress)
  except (InferenceError, CohortError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  conc = metrics.get("region_concentration", {})
  if "micro_over_tumour_on_immune" in conc:
    print(immune_sentence(conc))
  return 0


if __name__ == "__main__":
  sys.exit(main())
