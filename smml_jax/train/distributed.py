"""Multi-process start-up through `jax.distributed` (TPU pod slices, multi-node GPU, local CPU).

Call `maybe_initialize` before anything touches a JAX backend (jax.devices(), a computation,
jax.default_backend() ...): `jax.distributed.initialize` refuses to run after that.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
from typing import Iterator, Mapping, Optional, Sequence

import jax

_ENV_COORDINATOR = ("SMML_COORDINATOR_ADDRESS", "JAX_COORDINATOR_ADDRESS")
_ENV_NUM = ("SMML_NUM_PROCESSES", "JAX_NUM_PROCESSES")
_ENV_ID = ("SMML_PROCESS_ID", "JAX_PROCESS_ID")


def _env(names) -> Optional[str]:
  return next((os.environ[n] for n in names if os.environ.get(n)), None)


def _int(value, what: str) -> int:
  try:
    return int(value)
  except (TypeError, ValueError):
    raise ValueError(f"multi-process run: {what} must be an integer, got {value!r}") from None


def maybe_initialize(
  coordinator_address: Optional[str] = None, num_processes: Optional[int] = None, process_id: Optional[int] = None
) -> bool:
  """Initialises jax.distributed when this is one of several processes; returns whether it did.

  Flags win over the environment (SMML_/JAX_COORDINATOR_ADDRESS, _NUM_PROCESSES, _PROCESS_ID).
  On a TPU pod slice or under SLURM, `jax.distributed.initialize()` detects everything itself:
  set SMML_DISTRIBUTED=auto. A single process with none of these set does nothing.
  CPU processes exchange collectives over TCP with gloo.
  """
  coordinator_address = coordinator_address or _env(_ENV_COORDINATOR)
  num = num_processes if num_processes is not None else _env(_ENV_NUM)
  pid = process_id if process_id is not None else _env(_ENV_ID)
  # Only read when the CPU client is created; must not query the backend here (that would
  # initialise it before jax.distributed).
  if jax.config.jax_cpu_collectives_implementation is None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if os.environ.get("SMML_DISTRIBUTED") == "auto":
    jax.distributed.initialize()
    return True
  if coordinator_address is None or num is None or _int(num, "the process count") <= 1:
    return False
  num = _int(num, "the process count")
  if pid is None:
    raise ValueError("multi-process run: a process id is needed (--process-id or SMML_PROCESS_ID)")
  pid = _int(pid, "the process id")
  if not 0 <= pid < num:
    raise ValueError(f"multi-process run: process id {pid} not in [0, {num})")
  jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num, process_id=pid)
  return True


def barrier(name: str) -> None:
  """Blocks until every process reaches the barrier `name` (no-op with one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


@contextlib.contextmanager
def main_process_first(name: str) -> Iterator[None]:
  """Runs the body on process 0 first, then on the others (e.g. building a shared cache)."""
  if jax.process_index() != 0:
    barrier(name)
    yield
    return
  try:
    yield
  finally:  # also on failure, so the others go on (and report their own error) instead of hanging
    barrier(name)


def free_port() -> int:
  """A TCP port on localhost that was free a moment ago (bind to port 0)."""
  import socket

  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launch_local(
  command: Sequence[str],
  num_processes: int,
  *,
  devices_per_process: int = 1,
  timeout_s: float = 600.0,
  env: Optional[Mapping[str, str]] = None,
  cwd: Optional[str] = None,
  log_dir: Optional[str] = None,
) -> list[tuple[int, str]]:
  """Runs `command` as `num_processes` CPU processes of one JAX job on this machine.

  Each process gets SMML_COORDINATOR_ADDRESS (a free localhost port), SMML_NUM_PROCESSES,
  SMML_PROCESS_ID, JAX_PLATFORMS=cpu and `devices_per_process` host devices, so any entry point
  that calls `maybe_initialize` (e.g. `python -m experiments.run`) joins the job. When one
  process fails, or `timeout_s` passes, the others are killed instead of waiting forever.

  Returns:
    [(return code, combined stdout/stderr)] per process id; -9 marks a killed process.
  """
  import subprocess
  import tempfile
  import time

  address = f"127.0.0.1:{free_port()}"
  logs = pathlib.Path(log_dir or tempfile.mkdtemp(prefix="smml_launch_"))
  logs.mkdir(parents=True, exist_ok=True)
  procs, files = [], []
  for pid in range(num_processes):
    penv = {
      **os.environ,
      **(env or {}),
      "SMML_COORDINATOR_ADDRESS": address,
      "SMML_NUM_PROCESSES": str(num_processes),
      "SMML_PROCESS_ID": str(pid),
      "JAX_PLATFORMS": "cpu",
      "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process}",
    }
    f = open(logs / f"process_{pid}.log", "w+")
    files.append(f)
    procs.append(subprocess.Popen(list(command), env=penv, cwd=cwd, stdout=f, stderr=subprocess.STDOUT))
  deadline = time.monotonic() + timeout_s
  failed_at = None
  while any(p.poll() is None for p in procs):
    now = time.monotonic()
    if failed_at is None and any(p.poll() not in (None, 0) for p in procs):
      failed_at = now
    if now > deadline or (failed_at is not None and now > failed_at + 30):
      for p in procs:
        if p.poll() is None:
          p.kill()
      break
    time.sleep(0.2)
  results = []
  for p, f in zip(procs, files):
    p.wait()
    f.seek(0)
    results.append((p.returncode, f.read()))
    f.close()
  return results
