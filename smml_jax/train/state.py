"""The training state: everything a checkpoint must hold to resume bit for bit."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
  """step () int32, params, opt_state, rng (the dropout PRNG key, advanced every step)."""

  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
