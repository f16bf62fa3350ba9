"""Per-slide figures: sampling points beside attention mass, and gene importance bars."""

from __future__ import annotations

import pathlib
from typing import Mapping, Optional

import matplotlib.ticker
import matplotlib.transforms
import numpy as np
import pandas as pd

from smml_jax.evaluate.figures import _common
from smml_jax.evaluate.figures._common import PathLike, _group_colors, plt


def _nearest_cell_positions(points: np.ndarray, coords: np.ndarray, grid_side: int) -> np.ndarray:
  """(G, P, 2) (row, col) grid pixels -> (G, P, 2) slide (x, y) of the nearest real patch (NaN if none)."""
  cell = np.rint(points).astype(np.int64)
  inside = np.all((cell >= 0) & (cell < grid_side), axis=-1)
  flat = np.clip(cell[..., 0], 0, grid_side - 1) * grid_side + np.clip(cell[..., 1], 0, grid_side - 1)
  out = coords[flat].astype(np.float64)
  out[~inside] = np.nan
  return out


def outside_fraction(points: np.ndarray, grid_side: int) -> float:
  """Fraction of (..., 2) (row, col) pixel positions whose bilinear footprint misses the grid.

  Patch centres are at 0 .. n - 1; a point at or beyond -1 or n in either coordinate reads only the
  zero padding, i.e. sees no tissue. (Points between the border and there read part padding; the
  undeformed lattice puts its outer points on the border, -0.5 and n - 0.5.)
  """
  points = np.asarray(points, np.float64)
  out = np.any((points <= -1.0) | (points >= grid_side), axis=-1)
  return float(out.mean()) if out.size else 0.0


def _patch_ticks(ax: plt.Axes, n: int) -> None:
  """Integer patch indices on both axes (at most ~8 ticks each)."""
  ticks = matplotlib.ticker.MaxNLocator(nbins=7, integer=True).tick_values(0, n - 1)
  ticks = ticks[(ticks >= 0) & (ticks <= n - 1)].astype(int)
  ax.set_xticks(ticks)
  ax.set_yticks(ticks)
  ax.set_xlabel("patch column")
  ax.set_ylabel("patch row")


_REGION_COLORS = ("tab:cyan", "tab:green", "tab:orange", "tab:pink")


def plot_slide_sampling(
  path: PathLike,
  patch_image: np.ndarray,
  points_tumour: np.ndarray,
  points_micro: np.ndarray,
  mass_tumour: np.ndarray,
  mass_micro: np.ndarray,
  title: str,
  coords: Optional[np.ndarray] = None,
  regions: Optional[Mapping[str, np.ndarray]] = None,
) -> pathlib.Path:
  """One slide: each subspace's sampling points per offset group next to the attention mass per patch.

  A 2 x 2 panel: rows = tumour / microenvironment subspace; left = the patch grid (or slide layout)
  with the deformable sampling points, one colour per offset group; right = attention mass per patch,
  both subspaces on one colour scale, with the known regions drawn as contours. Axes are in patch
  indices (grid) or slide pixels (layout). A note says how many points fall outside the grid, where
  the bilinear sampling reads zero padding.

  Args:
    path: PNG to write.
    patch_image: (n, n) per-patch background value on the patch grid (e.g. a planted region mask,
      patch-feature norm, or 0/1 occupancy).
    points_tumour, points_micro: (G, P, 2) (row, col) pixel positions (`grid_points_to_pixels`, one slide).
    mass_tumour, mass_micro: (n, n) attention mass per patch (`patch_mass`, one slide).
    title: figure title (e.g. the slide id, its label and the prediction).
    coords: optional (n * n, 2) slide (x, y) position of every grid cell, row-major, NaN for padding
      cells; when given, the panels show the slide layout and each point sits on its nearest real patch.
    regions: optional {name: (n, n) 0/1 mask} (e.g. immune, tumour) contoured on the attention maps.
  """
  patch_image = np.asarray(patch_image, np.float64)
  if patch_image.ndim != 2 or patch_image.shape[0] != patch_image.shape[1]:
    raise ValueError(f"plot_slide_sampling: patch_image must be (n, n), got {patch_image.shape}")
  n = patch_image.shape[0]
  for name, pts in (("points_tumour", points_tumour), ("points_micro", points_micro)):
    if np.ndim(pts) != 3 or np.shape(pts)[-1] != 2:
      raise ValueError(f"plot_slide_sampling: {name} must be (G, P, 2), got {np.shape(pts)}")
  for name, mass in (("mass_tumour", mass_tumour), ("mass_micro", mass_micro)):
    if np.shape(mass) != (n, n):
      raise ValueError(f"plot_slide_sampling: {name} must be ({n}, {n}), got {np.shape(mass)}")
  if coords is not None and np.shape(coords) != (n * n, 2):
    raise ValueError(f"plot_slide_sampling: coords must be ({n * n}, 2), got {np.shape(coords)}")
  regions = dict(regions or {})
  for name, mask in regions.items():
    if np.shape(mask) != (n, n):
      raise ValueError(f"plot_slide_sampling: region {name!r} must be ({n}, {n}), got {np.shape(mask)}")

  # Shift the grey scale so the lowest background value is light grey, not invisible white.
  low, high = float(np.nanmin(patch_image)), float(np.nanmax(patch_image))
  shade = dict(cmap="Greys", vmin=low - 0.15 * max(high - low, 1e-12), vmax=high)
  # One scale for both subspaces' attention maps, so their brightness compares.
  top = max(float(np.nanmax(mass_tumour)), float(np.nanmax(mass_micro)), 1e-12)
  mass_scale = dict(cmap="magma", vmin=0.0, vmax=top)
  fig, axes = plt.subplots(2, 2, figsize=(10, 10))
  notes = []
  for row, (name, pts, mass) in enumerate(
    (("tumour", points_tumour, mass_tumour), ("microenvironment", points_micro, mass_micro))
  ):
    pts = np.asarray(pts, np.float64)
    mass = np.asarray(mass, np.float64)
    ax_pts, ax_mass = axes[row]
    colors = _group_colors(pts.shape[0])
    if coords is None:
      ax_pts.imshow(patch_image, **shade, origin="upper", extent=(-0.5, n - 0.5, n - 0.5, -0.5))
      for g in range(pts.shape[0]):
        ax_pts.scatter(pts[g, :, 1], pts[g, :, 0], s=9, color=colors[g], label=f"group {g}", edgecolors="none")
      ax_pts.set_xlim(-0.5 - 0.1 * n, n - 0.5 + 0.1 * n)
      ax_pts.set_ylim(n - 0.5 + 0.1 * n, -0.5 - 0.1 * n)
      ax_pts.add_patch(plt.Rectangle((-0.5, -0.5), n, n, fill=False, edgecolor="black", lw=0.8))
      mass_img = ax_mass.imshow(mass, **mass_scale, origin="upper")
      fine = 8  # contour an upsampled mask so the outline follows the patch edges
      sub = (np.arange(n * fine) + 0.5) / fine - 0.5
      for k, (region, mask) in enumerate(regions.items()):
        color = _REGION_COLORS[k % len(_REGION_COLORS)]
        ax_mass.contour(
          sub,
          sub,
          np.kron(np.asarray(mask, np.float64), np.ones((fine, fine))),
          levels=[0.5],
          colors=[color],
          linewidths=1.2,
        )
        ax_mass.plot([], [], color=color, lw=1.2, label=region)
      if regions:
        ax_mass.legend(loc="upper right", fontsize=7, framealpha=0.7)
      for ax in (ax_pts, ax_mass):
        _patch_ticks(ax, n)
    else:
      xy = np.asarray(coords, np.float64)
      real = np.all(np.isfinite(xy), axis=1)
      ax_pts.scatter(xy[real, 0], xy[real, 1], c=patch_image.ravel()[real], **shade, s=12, marker="s")
      slide_pts = _nearest_cell_positions(pts, xy, n)
      for g in range(pts.shape[0]):
        ax_pts.scatter(
          slide_pts[g, :, 0], slide_pts[g, :, 1], s=9, color=colors[g], label=f"group {g}", edgecolors="none"
        )
      mass_img = ax_mass.scatter(xy[real, 0], xy[real, 1], c=mass.ravel()[real], **mass_scale, s=12, marker="s")
      for ax in (ax_pts, ax_mass):
        ax.invert_yaxis()
        ax.set_aspect("equal")
        ax.set_xlabel("slide x (pixels)")
        ax.set_ylabel("slide y (pixels)")
    outside = outside_fraction(pts, n)
    if outside > 0:
      notes.append(f"{name}: {outside:.0%} of the sampling points lie outside the grid (they read only zero padding)")
    ax_pts.set_title(f"{name}: sampling points per offset group")
    ax_pts.legend(loc="upper right", fontsize=6, markerscale=1.5, ncol=2, framealpha=0.7)
    ax_mass.set_title(f"{name}: attention mass per patch")
    fig.colorbar(mass_img, ax=ax_mass, fraction=0.046, pad=0.04)
  fig.suptitle(title)
  if notes:
    fig.text(0.5, 0.005, "\n".join(notes), ha="center", va="bottom", fontsize=9, color="tab:red")
  return _common._save(fig, path)


def plot_gene_importance(path: PathLike, df_tumour: pd.DataFrame, df_micro: pd.DataFrame, k: int = 20) -> pathlib.Path:
  """Top-k genes per subspace: bars of mean |IG|, whiskers +- the std of |IG| across slides.

  Bar colour = sign of the mean attribution (red: raises the explained output, blue: lowers it).

  Args:
    df_tumour, df_micro: `interpret.top_genes` tables (gene, mean_abs_attribution,
      mean_attribution, and std_abs_attribution for the whiskers when present).
  """
  fig, axes = plt.subplots(1, 2, figsize=(11, max(3.0, 0.28 * k + 1.5)))
  for ax, (name, frame) in zip(axes, (("tumour genes", df_tumour), ("microenvironment genes", df_micro))):
    missing = {"gene", "mean_abs_attribution", "mean_attribution"} - set(frame.columns)
    if missing:
      raise ValueError(f"plot_gene_importance: the {name} table lacks column(s) {sorted(missing)}")
    top = frame.sort_values("mean_abs_attribution", ascending=False).head(k)[::-1]
    positive = top["mean_attribution"].to_numpy() >= 0
    spread = top["std_abs_attribution"].to_numpy() if "std_abs_attribution" in top else None
    y = np.arange(len(top))
    for sign, color, label in (
      (positive, "tab:red", "positive mean attribution"),
      (~positive, "tab:blue", "negative mean attribution"),
    ):
      ax.barh(y[sign], top["mean_abs_attribution"].to_numpy()[sign], color=color, label=label)
    if spread is not None:
      ax.errorbar(
        top["mean_abs_attribution"],
        y,
        xerr=np.nan_to_num(spread),
        fmt="none",
        ecolor="black",
        elinewidth=0.8,
        capsize=2,
        label="+- std across slides",
      )
    ax.set_yticks(y, top["gene"].astype(str))
    ax.set_title(f"{name}: top {len(top)} by mean |IG|")
    ax.set_xlabel("mean |integrated gradient|")
    ax.set_xlim(left=0)
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(loc="lower right", fontsize=7)
  fig.tight_layout()
  return _common._save(fig, path)
