"""The report's ratios with an empty denominator are reported as not available, never a crash."""

import json

import numpy as np

from smml_jax.evaluate import interpret, sampling


def _geometry(points_by_branch, n):
  geometry = {}
  for s, points in points_by_branch.items():
    mass = np.ones(points.shape[:-1], np.float32)
    geometry[s] = {
      "points": points,
      "point_mass": mass,
      "patch_mass": np.asarray(interpret.patch_mass(points, mass, n)),
    }
  return geometry


def test_zero_tumour_concentration_gives_an_unavailable_ratio():
  """A small run whose tumour branch never samples the immune region (the ZeroDivisionError)."""
  n, groups, side = 8, 2, 2
  immune = np.zeros((2, n, n), bool)
  immune[:, :2, :2] = True
  micro = np.zeros((2, groups, side * side, 2), np.float32)  # all on pixel (0, 0): immune
  tumour = np.full_like(micro, 6.0)  # all on pixel (6, 6): never immune
  conc = sampling.region_concentrations(
    _geometry({"tumour": tumour, "micro": micro}, n), {"immune_mask": immune.reshape(2, -1)}, n
  )
  assert conc["tumour_on_immune"] == 0.0 and conc["micro_on_immune"] > 1.0
  assert conc["micro_over_tumour_on_immune"] is None
  sentence = sampling.immune_sentence(conc)
  assert "micro/tumour point ratio n/a" in sentence
  json.dumps(conc)  # what report_metrics.json holds


def test_empty_region_gives_unavailable_concentrations():
  """No slide has any immune patch: every concentration on it is undefined (chance = 0)."""
  n, groups, side = 8, 2, 2
  points = np.full((2, groups, side * side, 2), 3.0, np.float32)
  conc = sampling.region_concentrations(
    _geometry({"tumour": points, "micro": points}, n), {"immune_mask": np.zeros((2, n * n), bool)}, n
  )
  assert conc["micro_on_immune"] is None and conc["tumour_attention_on_immune"] is None
  assert conc["micro_over_tumour_on_immune"] is None
  assert "n/a" in sampling.immune_sentence(conc)
