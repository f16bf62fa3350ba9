"""One process of the multi-process tests (launched by tests/test_distributed.py, not collected).

  python tests/distributed_worker.py --out RUN --data SPEC [--stop-after-epoch K] [--resume]
      [--snapshot NAME] [--coordinator-address H:P --num-processes N --process-id I]

Trains the tiny subspace configuration of `tiny_config` through `smml_jax.train.loop.train`.
With --snapshot, process 0 copies checkpoints/latest to RUN/NAME after the (stopped) run, so a
later resume in the same directory cannot overwrite what the test compares.
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TINY_MODEL = {"heads": 2, "dim_head": 8, "offset_groups": 2, "cpb_hidden": 8, "snn_widths": [8, 8, 8, 32], "dim": 32}


def tiny_config(data: str, data_dir: str, epochs: int = 2):
  """The grading task config with a tiny subspace model (dropout on) and a 4-divisible batch."""
  from smml_jax.train.config import make_config, read_config_file

  return make_config(
    read_config_file(REPO / "experiments" / "configs" / "grading.yaml"),
    {
      "model_options": TINY_MODEL,
      "data": {"data": data, "data_dir": data_dir},
      "train": {"epochs": epochs, "batch_size": 8, "eval_batch_size": 8, "progress": False},
    },
  )


def main() -> int:
  p = argparse.ArgumentParser()
  p.add_argument("--out", required=True)
  p.add_argument("--data", required=True)
  p.add_argument("--data-dir", required=True)
  p.add_argument("--stop-after-epoch", type=int)
  p.add_argument("--resume", action="store_true")
  p.add_argument("--snapshot")
  p.add_argument("--coordinator-address")
  p.add_argument("--num-processes", type=int)
  p.add_argument("--process-id", type=int)
  args = p.parse_args()
  from smml_jax.train import distributed

  distributed.maybe_initialize(args.coordinator_address, args.num_processes, args.process_id)
  import jax
  from smml_jax.train import loop

  out = pathlib.Path(args.out)
  loop.train(
    tiny_config(args.data, args.data_dir),
    out,
    resume=args.resume,
    stop_after_epoch=args.stop_after_epoch,
    log=lambda _: None,
  )
  if args.snapshot and jax.process_index() == 0:
    shutil.copytree(out / "checkpoints" / "latest", out / args.snapshot)
  distributed.barrier("worker:done")
  print(f"worker {jax.process_index()}/{jax.process_count()} done, {jax.device_count()} devices")
  return 0


if __name__ == "__main__":
  sys.exit(main())
