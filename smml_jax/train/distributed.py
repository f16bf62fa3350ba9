"""Multi-process start-up through `jax.distributed` (TPU pod slices, multi-node GPU, local CPU)."""

from __future__ import annotations

import os
from typing import Optional

import jax

_ENV_COORDINATOR = ("SMML_COORDINATOR_ADDRESS", "JAX_COORDINATOR_ADDRESS")
_ENV_NUM = ("SMML_NUM_PROCESSES", "JAX_NUM_PROCESSES")
_ENV_ID = ("SMML_PROCESS_ID", "JAX_PROCESS_ID")


def _env(names) -> Optional[str]:
  return next((os.environ[n] for n in names if os.environ.get(n)), None)


def maybe_initialize(coordinator_address: Optional[str] = None,
                     num_processes: Optional[int] = None,
                     process_id: Optional[int] = None) -> bool:
  """Initialises jax.distributed when this is one of several processes; returns whether it did.

  Flags win over the environment (SMML_/JAX_COORDINATOR_ADDRESS, _NUM_PROCESSES, _PROCESS_ID).
  On a TPU pod slice or under SLURM, `jax.distributed.initialize()` detects everything itself:
  set SMML_DISTRIBUTED=auto. A single process with none of these set does nothing.
  """
  coordinator_address = coordinator_address or _env(_ENV_COORDINATOR)
  num = num_processes if num_processes is not None else _env(_ENV_NUM)
  pid = process_id if process_id is not None else _env(_ENV_ID)
  if os.environ.get("SMML_DISTRIBUTED") == "auto":
    jax.distributed.initialize()
    return True
  if coordinator_address is None or num is None or int(num) <= 1:
    return False
  if pid is None:
    raise ValueError("multi-process run: a process id is needed (--process-id or "
                     "SMML_PROCESS_ID)")
  if jax.default_backend() == "cpu" or os.environ.get("JAX_PLATFORMS", "") == "cpu":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=int(num), process_id=int(pid))
  return True
