"""Where each slide's feature file lives: CLAM and TRIDENT output folders, read as they are.

CLAM (`create_patches_fp.py` + `extract_features_fp.py`): `<features>/h5_files/<slide>.h5` (or
`features` is that folder itself). TRIDENT (`run_batch_of_slides.py`):
`<job>/<mag>x_<ps>px_<ov>px_overlap/features_<encoder>/<slide>.h5`; the spec's `features` is the
job folder (`encoder` and, when the job holds several patchings, `patching` pick the folder) or a
`features_<encoder>` folder itself. A slide's file name is its id without the WSI extension.
"""

from __future__ import annotations

import pathlib
import re

from smml_jax.data.errors import CohortError, did_you_mean

WSI_SUFFIXES = (".svs", ".ndpi", ".tif", ".tiff", ".mrxs", ".scn", ".vms", ".bif", ".czi")
PATCHING = re.compile(r"^\d+(\.\d+)?x_\d+px_\d+px_overlap$")


def slide_file_stem(slide_id: str) -> str:
  """`TCGA-...-DX1.<uuid>.svs` -> `TCGA-...-DX1.<uuid>` (the name CLAM and TRIDENT give the .h5)."""
  for suffix in WSI_SUFFIXES:
    if slide_id.lower().endswith(suffix):
      return slide_id[: -len(suffix)]
  return slide_id


def _dirs(folder: pathlib.Path) -> list[str]:
  return sorted(p.name for p in folder.iterdir() if p.is_dir())


def clam_folder(features: pathlib.Path) -> pathlib.Path:
  """The folder of `<slide>.h5`: `features/h5_files` when CLAM's job folder is given."""
  if not features.is_dir():
    raise CohortError(
      f"features folder {features} does not exist (expected CLAM's output folder "
      "holding h5_files/, or the h5_files folder itself)"
    )
  return features / "h5_files" if (features / "h5_files").is_dir() else features


def _pick(found: list[str], wanted: str | None, what: str, field: str, where: pathlib.Path) -> str:
  if wanted is not None:
    if wanted not in found:
      raise CohortError(
        f"{where}: no {what} folder {wanted!r} (`{field}` in the spec); found {found}{did_you_mean(wanted, found)}"
      )
    return wanted
  if not found:
    raise CohortError(f"{where}: no {what} folder; expected TRIDENT's output here")
  if len(found) > 1:
    raise CohortError(f"{where}: {len(found)} {what} folders {found}; set `{field}` to pick one")
  return found[0]


def trident_folder(features: pathlib.Path, encoder: str | None = None, patching: str | None = None) -> pathlib.Path:
  """The folder of `<slide>.h5` in a TRIDENT job (or a features_<encoder> folder given directly).

  Args:
    features: the job folder, a `<mag>x_<ps>px_<ov>px_overlap` folder, or a features folder.
    encoder: the patch encoder's name as in `features_<encoder>` (e.g. uni_v2, conch_v15).
    patching: the `<mag>x_<ps>px_<ov>px_overlap` folder name.
  """
  if not features.is_dir():
    raise CohortError(
      f"features folder {features} does not exist (expected a TRIDENT job folder "
      "holding <mag>x_<ps>px_<ov>px_overlap/features_<encoder>/)"
    )
  if features.name.startswith("features_"):
    if encoder is not None and features.name != f"features_{encoder}":
      raise CohortError(
        f"{features}: the folder is for encoder {features.name[9:]!r}, but the spec's `encoder` is {encoder!r}"
      )
    return features
  if not PATCHING.match(features.name):
    found = [d for d in _dirs(features) if PATCHING.match(d)]
    features = features / _pick(found, patching, "<mag>x_<ps>px_<ov>px_overlap", "patching", features)
  encoders = [d[len("features_") :] for d in _dirs(features) if d.startswith("features_")]
  return features / f"features_{_pick(encoders, encoder, 'features_<encoder>', 'encoder', features)}"
