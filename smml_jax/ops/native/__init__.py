"""Native CPU kernels, compiled on first use against the installed jaxlib's XLA FFI headers.

`load()` compiles the `*.cc` files here (`cpb_mlp.cc`: the relative-position bias;
`depthwise.cc`: the offset network's strided depthwise conv) into one shared library with the
system C++ compiler (`$CXX`, else `c++`) for this machine's CPU (`-march=native`), caches the shared library under
`$SMML_JAX_CACHE` (default `~/.cache/smml_jax`) keyed by the source, the compiler command, the
jaxlib version and the CPU, and registers its handlers with XLA. A cached library is loaded only
if it is owned by the current user and its SHA-256 matches the one this build recorded beside it
(`<library>.sha256`); anything else (tampered, truncated, another user's file) is rebuilt.
It returns False, with the reason
in `unavailable_reason()`, where no compiler is found, the build fails or the kernels are turned
off with `SMML_JAX_NATIVE=0`; callers then use the XLA implementation.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import platform
import shlex
import subprocess
import tempfile
from typing import Optional

import jax
import jaxlib

SOURCES = tuple(sorted(pathlib.Path(__file__).parent.glob("*.cc")))
HEADERS = tuple(sorted(pathlib.Path(__file__).parent.glob("*.h")))
FORWARD_TARGET = "smml_cpb_bias_fwd"
BACKWARD_TARGET = "smml_cpb_bias_bwd"
DEPTHWISE_FORWARD_TARGET = "smml_depthwise2d_fwd"
DEPTHWISE_BACKWARD_TARGET = "smml_depthwise2d_bwd"
# FFI target name -> exported handler symbol.
_HANDLERS = {
  FORWARD_TARGET: "SmmlCpbBiasForward",
  BACKWARD_TARGET: "SmmlCpbBiasBackward",
  DEPTHWISE_FORWARD_TARGET: "SmmlDepthwise2dForward",
  DEPTHWISE_BACKWARD_TARGET: "SmmlDepthwise2dBackward",
}

_reason: Optional[str] = None


def _cpu_signature() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      lines = [line for line in f if line.startswith(("model name", "flags", "Features"))]
    return "".join(sorted(set(lines)))
  except OSError:
    return platform.processor()


def _compile_command(output: pathlib.Path) -> list[str]:
  cxx = shlex.split(os.environ.get("CXX", "c++"))
  return cxx + [
    "-O3",
    "-march=native",
    "-std=c++17",
    "-shared",
    "-fPIC",
    "-w",
    f"-I{jax.ffi.include_dir()}",
    *map(str, SOURCES),
    "-o",
    str(output),
  ]


def _library_path() -> pathlib.Path:
  cache = pathlib.Path(os.environ.get("SMML_JAX_CACHE", "~/.cache/smml_jax")).expanduser()
  key = hashlib.sha256()
  for source in SOURCES + HEADERS:
    key.update(source.read_bytes())
  key.update(" ".join(_compile_command(pathlib.Path("out"))).encode())
  key.update(jaxlib.__version__.encode())  # the FFI headers compiled against
  key.update(_cpu_signature().encode())
  key.update(platform.machine().encode())
  return cache / "native" / key.hexdigest()[:16] / "libsmml_jax_native.so"


def _digest(path: pathlib.Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def _hash_file(library: pathlib.Path) -> pathlib.Path:
  return library.with_name(library.name + ".sha256")


def _trusted(library: pathlib.Path) -> bool:
  """The cached library is ours: owned by this user and byte-identical to what the build wrote."""
  try:
    if library.stat().st_uid != os.getuid():
      return False
    return _hash_file(library).read_text().strip() == _digest(library)
  except (OSError, ValueError):
    return False


def _build(library: pathlib.Path) -> None:
  """Compiles into a temporary file and renames it, so concurrent builders never see half a file.

  The library's SHA-256 is recorded beside it (also by rename) for `_trusted`.
  """
  library.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=library.parent, suffix=".so.tmp")
  os.close(fd)
  tmp_hash = None
  try:
    proc = subprocess.run(_compile_command(pathlib.Path(tmp)), capture_output=True, text=True)
    if proc.returncode != 0:
      raise RuntimeError(f"compiling {', '.join(map(str, SOURCES))} failed:\n{proc.stderr.strip()[-2000:]}")
    fd, tmp_hash = tempfile.mkstemp(dir=library.parent, suffix=".sha256.tmp")
    with os.fdopen(fd, "w") as f:
      f.write(_digest(pathlib.Path(tmp)) + "\n")
    os.replace(tmp, library)
    os.replace(tmp_hash, _hash_file(library))
  finally:
    for path in (tmp, tmp_hash):
      if path is not None and os.path.exists(path):
        os.remove(path)


def ensure_library() -> pathlib.Path:
  """The path of a trusted compiled library, (re)building it when missing or not trusted."""
  library = _library_path()
  if not _trusted(library):
    _build(library)
  return library


@functools.cache
def load() -> bool:
  """Builds (once per machine) and registers the CPU kernels; True when they are usable."""
  global _reason
  if os.environ.get("SMML_JAX_NATIVE", "1") == "0":
    _reason = "turned off by SMML_JAX_NATIVE=0"
    return False
  try:
    lib = ctypes.CDLL(str(ensure_library()))
    for target, symbol in _HANDLERS.items():
      jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
  except (OSError, RuntimeError, AttributeError) as e:
    _reason = f"{type(e).__name__}: {e}"
    return False
  return True


def unavailable_reason() -> Optional[str]:
  """Why `load()` returned False (None when it has not been called or succeeded)."""
  return _reason
