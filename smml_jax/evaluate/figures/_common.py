"""What every figure shares: the Agg backend, the PNG writer, group colours."""

from __future__ import annotations

import pathlib
from typing import Union

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

PathLike = Union[str, pathlib.Path]
_DPI = 110


def _save(fig: plt.Figure, path: PathLike) -> pathlib.Path:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=_DPI, bbox_inches="tight", facecolor="white")
  plt.close(fig)
  return path


def _group_colors(groups: int) -> np.ndarray:
  return plt.get_cmap("tab10" if groups <= 10 else "tab20")(np.arange(groups) % 20)
