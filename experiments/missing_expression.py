"""Missing expression experiments on a synthetic cohort: `python -m experiments.missing_expression`.

`robustness`: test AUC (full test inputs) of `subspace` trained with a fraction of the training
patients' expression dropped (`data.drop_expression`), per fraction and seed. `survival`:
C-index of `subspace` with the batch C-index vs the confidence coordination score, per seed.
Every number is the test metric at the validation-selected epoch; the table gives mean +- std
over seeds. Writes <out>/results.json, <out>/table.md and, for robustness, <out>/robustness.png.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time
from typing import Any, Sequence

import numpy as np
import yaml

TINY_SUBSPACE = {"dim": 16, "heads": 2, "dim_head": 8, "offset_groups": 2, "cpb_hidden": 8,
                 "snn_widths": [16, 16]}
COHORT = {"layout": "synthetic", "n_patients": 160, "grid_side": 8, "feature_dim": 32,
          "n_genes_tumour": 16, "n_genes_micro": 24}


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m experiments.missing_expression", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("study", choices=("robustness", "survival"))
  p.add_argument("--out", required=True, help="folder for the runs and the results")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--fractions", default="0,0.25,0.5,0.75,1", help="robustness: drop fractions")
  p.add_argument("--epochs", type=int, default=6)
  p.add_argument("--data-dir", help="where cohort records are written (default: user cache)")
  return p


def _runs(study: str, fractions: Sequence[float]) -> list[tuple[str, dict[str, Any]]]:
  if study == "robustness":
    return [(f"drop{f:g}", {"task": "grading", "data": {"drop_expression": f},
                            "train": {"class_weights": "train"}}) for f in fractions]
  return [(score, {"task": "survival", "train": {"coordination_score": score,
                                                 "class_weights": "none"}})
          for score in ("cindex", "confidence")]


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  import jax
  # The runs share one program per setting (seeds differ only in data): compile it once.
  jax.config.update("jax_compilation_cache_dir", str(pathlib.Path(args.out) / "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  from smml_jax.train.config import make_config, merge
  from smml_jax.train.loop import train
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  spec = out / "cohort.yaml"
  spec.write_text(yaml.safe_dump(COHORT))
  seeds = [int(s) for s in args.seeds.split(",")]
  fractions = [float(f) for f in args.fractions.split(",")]
  results: dict[str, list[dict[str, Any]]] = {}
  for name, layer in _runs(args.study, fractions):
    for seed in seeds:
      base = {"model": "subspace", "model_options": TINY_SUBSPACE,
              "data": {"data": str(spec), "data_dir": args.data_dir, "val_fraction": 0.2,
                       "test_fraction": 0.2, "split_seed": seed},
              "train": {"epochs": args.epochs, "batch_size": 8, "eval_batch_size": 32,
                        "seed": seed, "progress": False},
              "optim": {"learning_rate": 1e-3, "weight_decay": 0.1,
                        "coupled_weight_decay": False}}
      config = make_config(merge(base, layer))
      t0 = time.perf_counter()
      summary = train(config, out / f"{name}-seed{seed}", overwrite=True, log=lambda _: None)
      metric = summary["selection_metric"]
      row = {"seed": seed, "metric": metric, "test": summary["test"][metric],
             "val": summary["val"][metric], "best_epoch": summary["best_epoch"],
             "wall_s": time.perf_counter() - t0}
      results.setdefault(name, []).append(row)
      print(f"{name} seed {seed}: test {metric} {row['test']:.4f} (val {row['val']:.4f}, epoch "
            f"{row['best_epoch'] + 1}, {row['wall_s']:.0f}s)", flush=True)
      (out / "results.json").write_text(json.dumps(results, indent=1))
  (out / "table.md").write_text(table(results))
  print(table(results))
  if args.study == "robustness":
    figure(results, fractions, out / "robustness.png")
  return 0


def _mean_std(rows: list[dict[str, Any]]) -> tuple[float, float]:
  values = np.asarray([r["test"] for r in rows], np.float64)
  return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else float("nan")


def table(results: dict[str, list[dict[str, Any]]]) -> str:
  lines = ["| setting | test metric (mean ± std) | per seed | wall s (total) |",
           "|---|---|---|---|"]
  for name, rows in results.items():
    mean, std = _mean_std(rows)
    seeds = ", ".join(f"{r['test']:.3f}" for r in rows)
    lines.append(f"| {name} | {rows[0]['metric']} {mean:.3f} ± {std:.3f} | {seeds} | "
                 f"{sum(r['wall_s'] for r in rows):.0f} |")
  return "\n".join(lines) + "\n"


def figure(results: dict[str, list[dict[str, Any]]], fractions: Sequence[float],
           path: pathlib.Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  stats = [_mean_std(results[f"drop{f:g}"]) for f in fractions if f"drop{f:g}" in results]
  x = [100 * f for f in fractions][:len(stats)]
  fig, ax = plt.subplots(figsize=(4.5, 3.2))
  ax.errorbar(x, [m for m, _ in stats], yerr=[s for _, s in stats], marker="o", capsize=3,
              label="subspace (mean ± std over seeds)")
  ax.set_xlabel("training patients without expression (%)")
  ax.set_ylabel("test AUC (full test inputs)")
  ax.set_title("Grading: robustness to missing expression")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


if __name__ == "__main__":
  raise SystemExit(main())
