"""Train and evaluate one model: `python -m experiments.run --task grading`.

With no data given it runs on the embedded synthetic glioma cohort; `--data SPEC.yaml` takes a
real cohort (see README). Prints a metrics table; the run directory keeps the resolved config,
metrics.jsonl, checkpoints, predictions and summary.json (layout: smml_jax/train/run_dir.py).

Exit status: 0 done; 2 refused before anything was written to --out (bad config, cohort or run
directory; the message names the file, key or field); 3 the run could not train (a non-finite
loss or gradient: the message names the step and the last good checkpoint).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Any, Sequence

from smml_jax.data.labels import TASK_NUM_CLASSES

CONFIG_DIR = pathlib.Path(__file__).resolve().parent / "configs"


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="python -m experiments.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--task", required=True, choices=sorted(TASK_NUM_CLASSES))
  p.add_argument("--data", help="'synthetic' (default) or a cohort spec file (YAML/JSON)")
  p.add_argument("--data-dir", help="where cohort records are written (default: user cache)")
  p.add_argument("--model", help="model name (default from the task config: subspace)")
  p.add_argument("--epochs", type=int)
  p.add_argument("--batch-size", type=int)
  p.add_argument("--seed", type=int)
  p.add_argument("--fold", type=int)
  p.add_argument("--out", help="run directory (default runs/<task>-<model>-seed<seed>)")
  p.add_argument(
    "--teacher",
    metavar="RUN_DIR",
    help="--model subspace-student: the trained subspace run it is distilled from (same split; sets distill.teacher)",
  )
  p.add_argument("--config", action="append", default=[], help="extra YAML/JSON config layer")
  p.add_argument(
    "--set",
    action="append",
    default=[],
    metavar="KEY=VALUE",
    help="override a config key, e.g. --set train.consistency_weight=0",
  )
  p.add_argument("--resume", action="store_true", help="continue the run in --out")
  p.add_argument(
    "--overwrite",
    action="store_true",
    help="replace the run in --out (removes only the files a run writes; a folder "
    "that is not a run directory is refused)",
  )
  p.add_argument(
    "--keep-checkpoints",
    type=int,
    default=2,
    metavar="N",
    help="keep the latest N epochs' checkpoints (plus the best); default 2",
  )
  p.add_argument("--no-progress", action="store_true", help="no per-epoch progress bar")
  distributed = p.add_argument_group("multi-process (see README: scale-out)")
  distributed.add_argument("--coordinator-address")
  distributed.add_argument("--num-processes", type=int)
  distributed.add_argument("--process-id", type=int)
  return p


def resolve_config(args: argparse.Namespace):
  from smml_jax.train.config import make_config, read_config_file

  layers = [read_config_file(CONFIG_DIR / f"{args.task}.yaml")]
  layers += [read_config_file(path) for path in args.config]
  cli: dict[str, Any] = {"task": args.task}
  if args.model:
    cli["model"] = args.model
  if args.teacher:
    cli["distill"] = {"teacher": args.teacher}
  data = {k: v for k, v in (("data", args.data), ("data_dir", args.data_dir), ("fold", args.fold)) if v is not None}
  train = {
    k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size), ("seed", args.seed)) if v is not None
  }
  if args.no_progress:
    train["progress"] = False
  if data:
    cli["data"] = data
  if train:
    cli["train"] = train
  layers.append(cli)
  return make_config(*layers, overrides=args.set)


def format_table(summary: dict) -> str:
  from smml_jax.tasks import get_task

  rows = [("metric", "val", "test")]
  for name in get_task(summary["task"]).table_metrics:
    vals = [summary[p].get(name) if summary[p] else None for p in ("val", "test")]
    rows.append((name, *("n/a" if v is None else f"{v:.4f}" for v in vals)))
  width = [max(len(r[i]) for r in rows) for i in range(3)]
  line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, width)))
  head = (
    f"{summary['task']} / {summary['model']} / seed {summary['seed']}: best epoch "
    f"{summary['best_epoch']} by validation {summary['selection_metric']}"
  )
  return "\n".join([head, line(rows[0]), line(tuple("-" * w for w in width))] + [line(r) for r in rows[1:]])


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  from smml_jax.train import distributed

  distributed.maybe_initialize(args.coordinator_address, args.num_processes, args.process_id)
  from smml_jax.train.checkpoints import CheckpointError
  from smml_jax.train.config import ConfigError
  from smml_jax.train.loop import TrainingDiverged, is_main_process, train
  from smml_jax.train.run_dir import RunDirError
  from smml_jax.data.errors import CohortError

  try:
    config = resolve_config(args)
    out = pathlib.Path(args.out or f"runs/{config.task}-{config.model}-seed{config.train.seed}")
    summary = train(
      config,
      out,
      resume=args.resume,
      overwrite=args.overwrite,
      keep_checkpoints=args.keep_checkpoints,
      log=print if is_main_process() else (lambda _: None),
    )
  except (ConfigError, RunDirError, CohortError) as e:  # refused: nothing was written to --out
    print(f"error: {e}", file=sys.stderr)
    return 2
  except (TrainingDiverged, CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 3
  if is_main_process():
    print(format_table(summary))
    print(f"run directory: {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
