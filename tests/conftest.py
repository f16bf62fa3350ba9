"""Shared test helpers: where the reference fixtures and the real data live."""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"


def reference_dir() -> pathlib.Path:
  """The parity fixture folder: $SMML_REFERENCE_FIXTURES, else ../shared/fixtures/reference."""
  env = os.environ.get("SMML_REFERENCE_FIXTURES")
  path = pathlib.Path(env) if env else SHARED / "fixtures" / "reference"
  if not path.is_dir():
    pytest.fail(
        f"reference fixtures not found at {path}: set SMML_REFERENCE_FIXTURES or place the "
        "shared folder beside the repository (../shared/fixtures/reference)", pytrace=False)
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
    pytest.fail(f"shared data folder not found at {path}: place ../shared beside the repository",
                pytrace=False)
  return path
