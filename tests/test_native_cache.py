"""The native-kernel cache loads a shared library only if this build wrote it, unchanged."""

import os
import stat

import pytest

from smml_jax.ops import native

# Stands in for the C++ compiler: writes a fixed "library" to the -o path and counts its calls.
FAKE_CXX = """#!/bin/sh
while [ "$1" != "-o" ]; do shift; done
printf 'compiled library bytes' > "$2"
echo x >> "$(dirname "$0")/calls"
"""


@pytest.fixture
def fake_build(tmp_path, monkeypatch):
  cxx = tmp_path / "bin" / "fake-cxx"
  cxx.parent.mkdir()
  cxx.write_text(FAKE_CXX)
  cxx.chmod(cxx.stat().st_mode | stat.S_IEXEC)
  monkeypatch.setenv("CXX", str(cxx))
  monkeypatch.setenv("SMML_JAX_CACHE", str(tmp_path / "cache"))
  calls = lambda: len((cxx.parent / "calls").read_text().split()) if (cxx.parent / "calls").exists() else 0
  return calls


def test_built_library_is_recorded_and_reused(fake_build):
  library = native.ensure_library()
  assert fake_build() == 1
  assert library.read_bytes() == b"compiled library bytes"
  recorded = library.with_name(library.name + ".sha256").read_text().strip()
  assert recorded == native._digest(library)
  assert native.ensure_library() == library and fake_build() == 1


@pytest.mark.parametrize("tamper", ["library", "hash", "no_hash", "truncated"])
def test_tampered_cache_is_rebuilt(fake_build, tamper):
  library = native.ensure_library()
  hash_file = library.with_name(library.name + ".sha256")
  if tamper == "library":
    library.write_bytes(b"compiled library bytes, then someone else's code")
  elif tamper == "hash":
    hash_file.write_text("0" * 64 + "\n")
  elif tamper == "no_hash":  # a cache written before hashes were recorded
    hash_file.unlink()
  else:
    library.write_bytes(library.read_bytes()[:5])
  assert native.ensure_library() == library
  assert fake_build() == 2
  assert library.read_bytes() == b"compiled library bytes"
  assert hash_file.read_text().strip() == native._digest(library)


def test_library_owned_by_another_user_is_rebuilt(fake_build, monkeypatch):
  native.ensure_library()
  real_uid = os.getuid()
  monkeypatch.setattr(os, "getuid", lambda: real_uid + 1)  # the file's owner is now "someone else"
  native.ensure_library()
  assert fake_build() == 2


def test_failed_rebuild_leaves_no_library_to_load(fake_build, tmp_path):
  library = native.ensure_library()
  library.write_bytes(b"tampered")
  failing = tmp_path / "bin" / "fake-cxx"  # the same compiler (same cache key), now failing
  failing.write_text("#!/bin/sh\nexit 1\n")
  with pytest.raises(RuntimeError, match="cpb_mlp.cc"):
    native.ensure_library()
  assert not native._trusted(library)
