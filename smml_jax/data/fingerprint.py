"""Stamps of a cohort's input files, so records built from other bytes are never reused silently.

A stamp is (size, mtime in ns, content hash) or None for a file that does not exist. The content
hash is cheap: for HDF5 files, every dataset's name, shape and dtype and every attribute (no
array data is read); for other files, SHA-256 of the size and the first and last 64 KiB.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
from typing import Any, Iterable, Mapping, Optional

import h5py
import numpy as np

_EDGE = 64 * 1024
Stamp = Optional[list[Any]]


def _h5_structure(path: pathlib.Path) -> str:
  h = hashlib.sha256()

  def add(name: str, obj) -> None:
    h.update(name.encode())
    if isinstance(obj, h5py.Dataset):
      h.update(f"{obj.shape}{obj.dtype.str}".encode())
    for key in sorted(obj.attrs):
      # repr of the values, not their bytes: variable-length string attributes come back as
      # object arrays, whose bytes are pointers.
      h.update(key.encode() + repr(np.asarray(obj.attrs[key]).tolist()).encode())

  with h5py.File(path, "r") as f:
    add("/", f)
    f.visititems(add)
  return h.hexdigest()[:16]


def _edges(path: pathlib.Path, size: int) -> str:
  h = hashlib.sha256(str(size).encode())
  with open(path, "rb") as f:
    h.update(f.read(_EDGE))
    if size > _EDGE:
      f.seek(max(_EDGE, size - _EDGE))
      h.update(f.read(_EDGE))
  return h.hexdigest()[:16]


def stamp(path: str | os.PathLike) -> Stamp:
  """[size, mtime_ns, content hash] of a file; None when it does not exist."""
  path = pathlib.Path(path)
  try:
    st = path.stat()
  except OSError:
    return None
  if not path.is_file():
    return None
  try:
    content = _h5_structure(path) if path.suffix.lower() in (".h5", ".hdf5") else _edges(path, st.st_size)
  except (OSError, ValueError):  # unreadable now: the build reports it with its own message
    content = "unreadable"
  return [st.st_size, st.st_mtime_ns, content]


def stamps(paths: Iterable[str | os.PathLike]) -> dict[str, Stamp]:
  """{absolute path: stamp} of every input file."""
  return {str(pathlib.Path(p).absolute()): stamp(p) for p in dict.fromkeys(paths)}


def changes(stored: Mapping[str, Stamp], current: Mapping[str, Stamp]) -> list[str]:
  """What differs between the inputs the records were built from and the current ones."""
  out = []
  for path in sorted(set(stored) | set(current)):
    old, new = stored.get(path), current.get(path)
    if old == new:
      continue
    if old is None:
      out.append(f"added {path}")
    elif new is None:
      out.append(f"deleted {path}")
    else:
      what = [k for k, a, b in zip(("size", "mtime", "content"), old, new) if a != b]
      out.append(f"changed {path} ({', '.join(what)})")
  return out


def summary(found: list[str], limit: int = 10) -> str:
  more = f"; and {len(found) - limit} more" if len(found) > limit else ""
  return "; ".join(found[:limit]) + more
