"""An embedded synthetic glioma cohort whose tasks need both modalities.

Pure numpy from one seed. Per patient, latent molecular status (IDH, 1p/19q, CDKN2A) is drawn;
grade comes from a score that adds a subtype baseline, a CDKN2A bonus, a *gene-visible*
proliferation factor `u` and a *histology-visible* anaplasia factor `v`, so neither modality
alone can grade well. WHO 2021 rules (labels.py) turn status + grade into the labels. A tumour
programme (IDH-wildtype, co-deletion, CDKN2A, `u`, two nuisance factors) drives the tumour
genes; an immune-infiltration level (higher in IDH-wildtype) drives the microenvironment genes
and the size of spatially coherent immune blobs on the patch grid. Survival times are
exponential with a hazard set by diagnosis, grade and infiltration, censored uniformly.

Each slide's grid holds three kinds of patch: normal brain, tumour (morphology cues for
anaplasia `v`, oligodendroglial co-deletion and IDH-wildtype necrosis, all scaled within noise)
and immune (blobs, stored as `immune_mask`). About a quarter of patients have a second slide
(same patient, fresh tissue layout and noise, same genes).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd

from smml_jax.data import builders
from smml_jax.data import labels as labels_lib
from smml_jax.data.bags import grid_positions


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  n_patients: int = 400
  second_slide_fraction: float = 0.25
  grid_side: int = 16
  feature_dim: int = 128
  n_genes_tumour: int = 32
  n_genes_micro: int = 64
  seed: int = 0
  patch_dtype: str = "float16"
  # Signal strengths (in units of the per-dimension patch noise / gene log-noise).
  patch_noise: float = 1.0
  anaplasia_scale: float = 0.35  # v along the grade direction, tumour patches only
  morphology_scale: float = 0.35  # co-deletion / IDH-wildtype cues, tumour patches only
  immune_scale: float = 1.0
  gene_noise: float = 0.6


@dataclasses.dataclass
class SyntheticCohort:
  """The generated cohort.

  slides: slide table (features.TABLE_COLUMNS), patients in order, second slides after the first.
  genes_tumour (n_slides, Gt), genes_micro (n_slides, Gm): raw positive expression (FPKM-like).
  latents: per-slide arrays `u`, `v`, `infiltration`, `patient_index`.
  """

  config: SyntheticConfig
  slides: pd.DataFrame
  genes_tumour: np.ndarray
  genes_micro: np.ndarray
  latents: dict[str, np.ndarray]
  _prototypes: dict[str, np.ndarray]

  def slide(self, i: int) -> dict[str, np.ndarray]:
    """Slide i: patches (S*S, D) float32, coords (S*S, 2), tissue_mask, immune_mask, tumour_mask."""
    return _render_slide(self.config, self._prototypes, self.slides.iloc[i], self.latents, i)


def _unit(rng: np.random.Generator, d: int) -> np.ndarray:
  x = rng.standard_normal(d)
  return x / np.linalg.norm(x)


def _grade_from_score(score: np.ndarray) -> np.ndarray:
  return np.digitize(score, (0.0, 1.3)).astype(np.int64)


def _blob_field(rng: np.random.Generator, side: int, n_blobs: int, radius: float) -> np.ndarray:
  """(side*side,) smooth field: a sum of Gaussian bumps at random centres."""
  pos = grid_positions(side)
  centres = rng.uniform(0, side - 1, size=(n_blobs, 2))
  d2 = ((pos[:, None, :] - centres[None]) ** 2).sum(-1)
  return np.exp(-d2 / (2 * radius**2)).sum(1)


def _top_fraction(field: np.ndarray, fraction: float) -> np.ndarray:
  k = max(1, int(round(fraction * field.size)))
  mask = np.zeros(field.size, np.bool_)
  mask[np.argsort(-field, kind="stable")[:k]] = True
  return mask


def generate(config: SyntheticConfig = SyntheticConfig()) -> SyntheticCohort:
  """Draws the patient latents, labels, genes and survival of the cohort."""
  rng = np.random.default_rng(config.seed)
  p = config.n_patients
  idh = (rng.random(p) < 0.45).astype(np.int64)
  codel = np.where(idh == 1, rng.random(p) < 0.45, 0).astype(np.int64)
  cdkn2a_rate = np.where(idh == 0, 0.55, np.where(codel == 1, 0.03, 0.2))
  cdkn2a = (rng.random(p) < cdkn2a_rate).astype(np.int64)
  u, v = rng.standard_normal(p), rng.standard_normal(p)
  astro = (idh == 1) & (codel == 0)
  base = np.where(idh == 0, 1.2, np.where(codel == 1, -0.5, -0.1)) + 0.8 * (astro & (cdkn2a == 1))
  grade = _grade_from_score(base + 0.8 * u + 0.8 * v + 0.25 * rng.standard_normal(p))
  infiltration = 0.8 * (1 - idh) - 0.4 + 0.8 * rng.standard_normal(p)
  diagnosis = labels_lib.who2021_diagnosis(idh, codel, cdkn2a, grade)
  subtype = labels_lib.who2021_subtype(idh, codel)
  # Histology codes as the original: oligoastrocytoma 0, astrocytoma 1, oligodendroglioma 2, GBM 3.
  histology = np.where(idh == 0, 3, np.where(codel == 1, 2, np.where(rng.random(p) < 0.3, 0, 1)))

  median_days = np.array([420.0, 900.0, 2400.0, 3600.0])[diagnosis]
  rate = np.log(2) / median_days * np.exp(0.3 * (grade - 1) + 0.35 * infiltration)
  death = rng.exponential(1.0 / rate)
  censor = rng.uniform(60.0, 3650.0, size=p)
  surv_time = np.maximum(np.round(np.minimum(death, censor)), 1.0)
  event = (death <= censor).astype(np.int64)

  # Genes: log-expression = baseline + loadings @ factors + noise, reported as exp (FPKM-like).
  nuisance = rng.standard_normal((p, 3))
  tumour_factors = np.stack([1.0 - idh, codel, cdkn2a, u, nuisance[:, 0], nuisance[:, 1]], 1)
  load_t = rng.normal(0.0, 0.3, (tumour_factors.shape[1], config.n_genes_tumour))
  for g in range(config.n_genes_tumour):  # each gene is driven mainly by one factor
    load_t[g % 4, g] += rng.choice([-1.0, 1.0]) * rng.uniform(0.6, 1.1)
  micro_factors = np.stack([infiltration, nuisance[:, 2]], 1)
  load_m = rng.normal(0.0, 0.2, (2, config.n_genes_micro))
  load_m[0] += rng.uniform(0.5, 1.0, config.n_genes_micro)
  log_t = rng.uniform(1.0, 4.0, config.n_genes_tumour) + tumour_factors @ load_t
  log_m = rng.uniform(0.5, 3.0, config.n_genes_micro) + micro_factors @ load_m
  genes_t = np.exp(log_t + config.gene_noise * rng.standard_normal(log_t.shape))
  genes_m = np.exp(log_m + config.gene_noise * rng.standard_normal(log_m.shape))

  n_slides = 1 + (rng.random(p) < config.second_slide_fraction)
  patient_index = np.concatenate([np.arange(p)] + [np.flatnonzero(n_slides == 2)])
  slide_number = np.concatenate([np.ones(p, np.int64), np.full((n_slides == 2).sum(), 2)])
  order = np.lexsort((slide_number, patient_index))
  patient_index, slide_number = patient_index[order], slide_number[order]
  pid = np.array([f"SYN-{i:04d}" for i in range(p)])
  pi = patient_index
  slides = pd.DataFrame(
    {
      "patient_id": pid[pi],
      "slide_id": [f"{pid[i]}-DX{k}" for i, k in zip(pi, slide_number)],
      "idh": idh[pi],
      "codel": codel[pi],
      "cdkn2a": cdkn2a[pi],
      "histology": histology[pi],
      "grade": grade[pi],
      "diagnosis": diagnosis[pi],
      "subtype": subtype[pi],
      "event": event[pi],
      "surv_time": surv_time[pi].astype(np.float32),
    }
  )
  proto_rng = np.random.default_rng([config.seed, 1])
  d = config.feature_dim
  prototypes = {
    name: _unit(proto_rng, d) for name in ("normal", "tumour", "immune", "anaplasia", "oligo", "necrosis", "stain")
  }
  latents = {
    "u": u[pi],
    "v": v[pi],
    "infiltration": infiltration[pi],
    "patient_index": pi,
    "slide_number": slide_number,
  }
  return SyntheticCohort(
    config, slides, genes_t[pi].astype(np.float32), genes_m[pi].astype(np.float32), latents, prototypes
  )


def _render_slide(
  config: SyntheticConfig, proto: dict[str, np.ndarray], row: pd.Series, latents: dict[str, np.ndarray], i: int
) -> dict[str, np.ndarray]:
  side, d = config.grid_side, config.feature_dim
  rng = np.random.default_rng([config.seed, 2, int(latents["patient_index"][i]), int(latents["slide_number"][i])])
  n = side * side
  immune_fraction = 0.04 + 0.3 / (1.0 + np.exp(-latents["infiltration"][i]))
  immune = _top_fraction(
    _blob_field(rng, side, int(rng.integers(1, 4)), side / 7.0) + 1e-3 * rng.random(n), immune_fraction
  )
  tumour_field = _blob_field(rng, side, 4, side / 3.0) + 1e-3 * rng.random(n)
  tumour = _top_fraction(tumour_field, rng.uniform(0.35, 0.7)) & ~immune
  normal = ~(tumour | immune)

  scale = 2.0  # prototype norm, in units of per-dimension noise
  tumour_vec = (
    scale * proto["tumour"]
    + config.anaplasia_scale * latents["v"][i] * proto["anaplasia"] * np.sqrt(d) / 4
    + config.morphology_scale * row["codel"] * proto["oligo"] * np.sqrt(d) / 4
    + config.morphology_scale * (1 - row["idh"]) * proto["necrosis"] * np.sqrt(d) / 4
  )
  patches = config.patch_noise * rng.standard_normal((n, d))
  patches[normal] += scale * proto["normal"]
  patches[tumour] += tumour_vec
  patches[immune] += config.immune_scale * scale * proto["immune"]
  patches += rng.normal(0.0, 0.5) * proto["stain"]  # slide-level staining shift
  return {
    "patches": patches.astype(np.float32),
    "coords": grid_positions(side),
    "tissue_mask": np.ones(n, np.bool_),
    "immune_mask": immune,
    "tumour_mask": tumour,
  }


@dataclasses.dataclass(frozen=True)
class SyntheticSource:
  """CohortSource of the synthetic cohort."""

  config: SyntheticConfig = SyntheticConfig()
  layout: str = "synthetic"

  def fingerprint(self) -> dict[str, Any]:
    return dataclasses.asdict(self.config)

  def input_files(self) -> list:
    return []  # generated from the config alone

  def prepare(self) -> builders.PreparedCohort:
    cohort = generate(self.config)
    c = self.config
    return builders.PreparedCohort(
      table=cohort.slides,
      genes_tumour=cohort.genes_tumour,
      genes_micro=cohort.genes_micro,
      gene_names={
        "tumour": [f"SYN_T{g:03d}" for g in range(c.n_genes_tumour)],
        "micro": [f"SYN_M{g:03d}" for g in range(c.n_genes_micro)],
      },
      grid_side=c.grid_side,
      feature_dim=c.feature_dim,
      read_slide=cohort.slide,
      patch_dtype=c.patch_dtype,
      extra_masks=("immune_mask", "tumour_mask"),
      gene_transform="log1p_zscore",
      info={"generator": "smml_jax.data.synthetic"},
    )
