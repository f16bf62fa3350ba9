"""Where the deformable sampling points sit and whether the prediction uses them.

`sampling_geometry` turns the model's sampling grids and attention into points and attention mass
per patch; `region_concentrations` measures how much more often each branch's points (or its
attention mass) land in a cohort's planted regions than chance, beside two content-blind nulls (the
undeformed lattice, another slide's regions); `sampling_use` scores the slides again with each
branch's offsets zeroed / attention removed.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Optional

import numpy as np
import pandas as pd

from smml_jax.evaluate import ablation, interpret

SUBSPACE_TITLES = {"tumour": "tumour", "micro": "microenvironment"}


def sampling_geometry(outputs: Mapping[str, np.ndarray], grid_side: int) -> dict[str, Any]:
  """Deformable sampling points and attention mass per patch, per subspace.

  Args:
    outputs: `inference.run_model` fields: grid_<s> (n, G, 2, S, S) and attn_<s> (n, H, M), H a
      multiple of G (heads of one offset group are contiguous), M = S * S.
    grid_side: n of the patch grid.

  Returns:
    {s: {'points': (n, G, M, 2) (row, col) pixels, 'point_mass': (n, G, M) attention mass per point
    (summed over the group's heads and all queries), 'patch_mass': (n, grid_side, grid_side)}}, or
    {} when the model has no 2D sampling grids (a baseline or the 1D variant).
  """
  geometry = {}
  for s in ("tumour", "micro"):
    grid, attn = outputs.get(f"grid_{s}"), outputs.get(f"attn_{s}")
    if grid is None or attn is None or grid.ndim != 5 or grid.shape[2] != 2:
      return {}
    n, groups, _, side, _ = grid.shape
    points = np.asarray(
      interpret.grid_points_to_pixels(grid.reshape(n * groups, 2, side, side), grid_side, side, groups)
    )
    heads, m = attn.shape[1], attn.shape[2]
    if heads % groups or m != side * side:
      raise ValueError(
        f"sampling_geometry: attention mass {attn.shape} does not fit {groups} offset groups of {side}x{side} points"
      )
    point_mass = attn.reshape(n, groups, heads // groups, m).sum(axis=2)
    patch = np.asarray(interpret.patch_mass(points, point_mass, grid_side))
    geometry[s] = {"points": points, "point_mass": point_mass, "patch_mass": patch}
  return geometry


def region_concentrations(
  geometry: Mapping[str, Mapping[str, np.ndarray]], outputs: Mapping[str, np.ndarray], grid_side: int
) -> dict[str, float]:
  """Concentration of each branch's sampling on each planted region (chance = 1), with two nulls.

  For the regions the cohort carries (`immune_mask`, `tumour_mask`) and s in (tumour, micro):
    '<s>_on_<region>': the sampling POINTS (each with its bilinear weights);
    '<s>_attention_on_<region>': the ATTENTION MASS per patch (each point weighted by the mass
      its key receives), i.e. where the branch looks, not only where its points sit;
    'lattice_on_<region>': the undeformed lattice (offsets zero) on the same slides; it is not 1
      because the lattice puts part of its mass on the grid's border rows/columns;
    '<s>_on_<region>_mismatched', '<s>_attention_on_<region>_mismatched': each slide's points /
      mass scored on the NEXT slide's region (needs >= 2 slides): what content-blind placement
      (e.g. drifting off the border) gives with the same geometry;
  and 'micro_over_tumour_on_immune' = micro_on_immune / tumour_on_immune.
  """

  def defined(fn, *args) -> Optional[float]:
    try:
      return fn(*args)
    except interpret.UndefinedRatio:  # an empty denominator: not available
      return None

  result: dict[str, Optional[float]] = {}
  if not geometry:
    return result
  for region in ("immune", "tumour"):
    mask = outputs.get(f"{region}_mask")
    if mask is None:
      continue
    mask = np.asarray(mask, np.float64).reshape(len(mask), -1)
    others = np.roll(mask, 1, axis=0) if len(mask) > 1 else None
    for s in ("tumour", "micro"):
      points = geometry[s]["points"]
      result[f"{s}_on_{region}"] = defined(interpret.region_concentration, points, mask, grid_side)
      result[f"{s}_attention_on_{region}"] = defined(interpret.mass_concentration, geometry[s]["patch_mass"], mask)
      if others is not None:
        result[f"{s}_on_{region}_mismatched"] = defined(interpret.region_concentration, points, others, grid_side)
        result[f"{s}_attention_on_{region}_mismatched"] = defined(
          interpret.mass_concentration, geometry[s]["patch_mass"], others
        )
    batch, groups, m, _ = geometry["micro"]["points"].shape
    side = int(round(m**0.5))
    lattice = interpret.grid_points_to_pixels(interpret.lattice_grid(batch * groups, side), grid_side, side, groups)
    result[f"lattice_on_{region}"] = defined(interpret.region_concentration, lattice, mask, grid_side)
  if "micro_on_immune" in result:
    micro, tumour = result["micro_on_immune"], result["tumour_on_immune"]
    result["micro_over_tumour_on_immune"] = (
      micro / tumour if micro is not None and tumour is not None and tumour > 0 else None
    )
  return result


def sampling_use(
  run, batches: Callable[[], Iterable[Mapping]], table: pd.DataFrame, outputs: Mapping[str, np.ndarray]
) -> dict[str, Any]:
  """The headline metric with each branch's offsets zeroed / attention removed (`ablation`), and
  each branch's offset statistics: whether the figures' sampling points carry the prediction."""
  use = ablation.ablation_metrics(run, batches, table)
  use["offsets"] = {s: ablation.offset_statistics(outputs[f"grid_{s}"], run.grid_side) for s in ablation.BRANCHES}
  return use


def sampling_use_table(use: Mapping[str, Any]) -> pd.DataFrame:
  rows = []
  for s in use["offsets"]:
    off = use["offsets"][s]
    rows.append(
      {
        "branch": SUBSPACE_TITLES[s],
        f"{use['metric']} offsets zeroed": use[f"{s}_offsets_zero"],
        f"{use['metric']} attention removed": use[f"{s}_attention_off"],
        "mean |offset| (patches)": off["mean_abs_offset"],
        "between-slide std (patches)": off["between_slide_std"],
        "content fraction": off["content_fraction"],
      }
    )
  return pd.DataFrame(rows)


def sampling_use_text(use: Mapping[str, Any]) -> str:
  return (
    f"The same slides scored again with one part of one branch switched off ({use['metric']} "
    f"of the trained model: {use['trained']:.4f}). *Offsets zeroed*: the branch samples the "
    "undeformed lattice; *attention removed*: the attention output is zero and only the "
    "branch's residual path (mean of its fused tokens) is left. A branch whose metric does not "
    "move does not use where its points sit, whatever the figures show. *Between-slide std* "
    "is how much each offset varies from slide to slide; *content fraction* = that std / the "
    "RMS offset (0: one fixed shift on every slide, content-blind)."
  )


def _times(value: Optional[float], suffix: str = "x") -> str:
  return "n/a" if value is None else f"{value:.3f}{suffix}"


def immune_sentence(concentration: Mapping[str, Optional[float]]) -> str:
  """One sentence with both immune-region measures of both branches and the lattice baseline;
  a measure with an empty denominator reads 'n/a'."""
  c = concentration
  text = (
    f"Immune regions, chance = 1: microenvironment branch sampling points "
    f"{_times(c['micro_on_immune'])}, attention-weighted "
    f"{_times(c['micro_attention_on_immune'])}; tumour branch points "
    f"{_times(c['tumour_on_immune'])}, attention-weighted "
    f"{_times(c['tumour_attention_on_immune'])}; micro/tumour point ratio "
    f"{_times(c['micro_over_tumour_on_immune'], '')}; undeformed lattice "
    f"{_times(c['lattice_on_immune'])}"
  )
  if "micro_on_immune_mismatched" in c:
    text += (
      f"; micro points on another slide's immune regions "
      f"{_times(c['micro_on_immune_mismatched'])} (attention-weighted "
      f"{_times(c['micro_attention_on_immune_mismatched'])})"
    )
  return text + "."
