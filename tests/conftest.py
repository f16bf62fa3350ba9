"""Shared test helpers: where the reference fixtures and the real data live; the tiny trained run."""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Optional

import jax
import numpy as np
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"


def _use_persistent_compilation_cache() -> None:
  """Shares compiled XLA programs between tests, xdist workers and sessions.

  Most of the suite's time is XLA compiling the same small models again (each test builds its own
  jit). The cache is keyed by the program, the jax/jaxlib version and the backend, so a stale entry
  is never used. $SMML_TEST_JAX_CACHE names the folder ("off" disables); the default is under
  .pytest_cache/, which git ignores. Subprocesses the tests start do not inherit it.
  """
  where = os.environ.get("SMML_TEST_JAX_CACHE", str(REPO_ROOT / ".pytest_cache" / "jax_cache"))
  if where.lower() == "off":
    return
  jax.config.update("jax_compilation_cache_dir", where)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


_use_persistent_compilation_cache()


_GROUPED = "smml_loadgroup"  # workerinput key: the controller schedules by xdist_group


def pytest_configure(config):
  """`-n N` schedules as `--dist loadgroup`: tests marked `xdist_group(name)` run on one worker.

  Tests that compile the same large program (the tiny trained run, the mcat step) would otherwise
  land on both workers and compile it twice at the same time, before the persistent cache holds it.
  Unmarked tests are distributed as with `load`; any other `--dist` choice is kept. A worker parses
  the command line again, so the controller tells it to tag grouped tests (`pytest_configure_node`).
  """
  if getattr(config.option, "dist", "no") == "load":  # the controller of `-n N`
    config.option.dist = "loadgroup"
  if getattr(config, "workerinput", {}).get(_GROUPED):  # a worker of that controller
    config.option.loadgroup = True


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
  node.workerinput[_GROUPED] = node.config.option.dist == "loadgroup"


def reference_dir() -> pathlib.Path:
  """The parity fixture folder: $SMML_REFERENCE_FIXTURES, else ../shared/fixtures/reference."""
  env = os.environ.get("SMML_REFERENCE_FIXTURES")
  path = pathlib.Path(env) if env else SHARED / "fixtures" / "reference"
  if not path.is_dir():
    pytest.fail(
      f"reference fixtures not found at {path}: set SMML_REFERENCE_FIXTURES or place the "
      "shared folder beside the repository (../shared/fixtures/reference)",
      pytrace=False,
    )
  return path


def load_fixture(name: str) -> dict[str, np.ndarray]:
  path = reference_dir() / name
  if not path.is_file():
    pytest.fail(f"reference fixture {path} is missing", pytrace=False)
  with np.load(path, allow_pickle=False) as data:
    return {k: data[k] for k in data.files}


def shared_data_dir() -> pathlib.Path:
  """The real public TCGA tables: ../shared/data (fails, never skips, when absent)."""
  path = SHARED / "data"
  if not path.is_dir():
    pytest.fail(f"shared data folder not found at {path}: place ../shared beside the repository", pytrace=False)
  return path


def max_rel_err(got, want) -> float:
  """max |got - want| / max |want| over the whole array (the fixtures README's definition)."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))


def assert_within_tol(got, want, tol: float, name: str) -> None:
  """The fixtures README's rule for float32 builds: max abs error <= 3 * tol + 1e-6."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert got.shape == want.shape, f"{name}: shape {got.shape} != reference {want.shape}"
  err = float(np.max(np.abs(got - want)))
  assert err <= 3 * tol + 1e-6, f"{name}: max abs error {err:.3g} > 3 * tol ({tol:.3g}) + 1e-6"


def native_skip_reason() -> Optional[str]:
  """Why the native CPU kernels cannot run here (no C++ compiler, SMML_JAX_NATIVE=0), else None."""
  from smml_jax.ops import native

  return None if native.load() else f"no native kernels: {native.unavailable_reason()}"


# A test (or a parameter: `pytest.param("native", marks=NATIVE)`) that needs the native kernels;
# it is skipped, with the reason, wherever they cannot be built.
NATIVE = pytest.mark.native


@pytest.fixture(autouse=True)
def _skip_without_native_kernels(request):
  if request.node.get_closest_marker("native") is not None:
    reason = native_skip_reason()
    if reason is not None:
      pytest.skip(reason)


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory):
  """(spec path, records folder) of `_tiny.TINY_COHORT`; the first run that loads it builds the records.

  Session-scoped (per xdist worker): every test that trains on the tiny cohort reuses the records.
  """
  from _tiny import write_spec

  root = tmp_path_factory.mktemp("tiny_cohort")
  return write_spec(root / "tiny.yaml"), str(root / "records")


@dataclasses.dataclass(frozen=True)
class TinyRun:
  """A finished `_tiny.TINY_EPOCHS`-epoch grading run. Read-only: copy `out` before writing into it."""

  out: pathlib.Path
  summary: dict
  lines: tuple[str, ...]  # what train() printed to the console, in order


@pytest.fixture(scope="session")
def tiny_run(tiny_cohort, tmp_path_factory) -> TinyRun:
  """The tiny grading run of `_tiny.tiny_config`, trained once per session (per xdist worker)."""
  from _tiny import tiny_config

  from smml_jax.train.loop import train

  spec, data_dir = tiny_cohort
  out = tmp_path_factory.mktemp("tiny_run") / "run"
  lines: list[str] = []
  summary = train(tiny_config(spec, data_dir), out, log=lines.append)
  return TinyRun(out, summary, tuple(lines))
