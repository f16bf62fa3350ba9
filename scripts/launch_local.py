"""Runs a JAX entry point as several CPU processes on this machine (collectives over loopback).

  python scripts/launch_local.py -n 2 --devices-per-process 2 -- \
      python -m experiments.run --task grading --epochs 1

Every process gets SMML_COORDINATOR_ADDRESS / SMML_NUM_PROCESSES / SMML_PROCESS_ID (read by
`smml_jax.train.distributed.maybe_initialize`); process logs go to --log-dir and process 0's is
printed at the end.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from smml_jax.train.distributed import launch_local  # noqa: E402


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("-n", "--num-processes", type=int, default=2)
  p.add_argument("--devices-per-process", type=int, default=1)
  p.add_argument("--timeout", type=float, default=3600.0, help="seconds before all are killed")
  p.add_argument("--log-dir", help="where process_<i>.log go (default: a temp folder)")
  p.add_argument("command", nargs=argparse.REMAINDER)
  args = p.parse_args()
  command = args.command[1:] if args.command[:1] == ["--"] else args.command
  if not command:
    p.error("give the command to run after --")
  results = launch_local(
    command,
    args.num_processes,
    devices_per_process=args.devices_per_process,
    timeout_s=args.timeout,
    log_dir=args.log_dir,
  )
  print(results[0][1], end="")
  for i, (rc, out) in enumerate(results):
    if rc != 0:
      print(f"--- process {i} exited with {rc}; its log ends:\n{out[-3000:]}", file=sys.stderr)
  return max((abs(rc) for rc, _ in results), default=0)


if __name__ == "__main__":
  sys.exit(main())
