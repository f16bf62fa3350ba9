"""Input-file stamps: stable for unchanged files, different for changed structure or bytes."""

import h5py
import numpy as np

from smml_jax.data import fingerprint


def _h5(path, shape=(3, 4), encoder="resnet"):
  with h5py.File(path, "w") as f:
    f["features"] = np.zeros(shape, np.float32)
    f["features"].attrs["names"] = np.array(["a", "bb"], dtype=h5py.string_dtype())
    f.attrs["encoder"] = encoder


def test_stamp_is_stable_with_string_attributes(tmp_path):
  _h5(tmp_path / "a.h5")
  assert fingerprint.stamp(tmp_path / "a.h5") == fingerprint.stamp(tmp_path / "a.h5")


def test_h5_content_hash_follows_shapes_and_attributes(tmp_path):
  _h5(tmp_path / "a.h5")
  _h5(tmp_path / "b.h5", shape=(3, 5))
  _h5(tmp_path / "c.h5", encoder="uni")
  hashes = [fingerprint.stamp(tmp_path / f"{n}.h5")[2] for n in "abc"]
  assert len(set(hashes)) == 3


def test_changes_name_added_deleted_and_changed_files(tmp_path):
  a, b, c = (tmp_path / n for n in ("a.csv", "b.csv", "c.csv"))
  a.write_text("x,y\n1,2\n")
  b.write_text("x\n")
  before = fingerprint.stamps([a, b, c])
  a.write_text("x,y\n1,3\n")
  b.unlink()
  c.write_text("new\n")
  found = fingerprint.changes(before, fingerprint.stamps([a, b, c]))
  assert found[0].startswith(f"changed {a} (") and "content" in found[0]  # mtime may tie
  assert found[1:] == [f"deleted {b}", f"added {c}"]


def test_a_feature_file_that_appears_rebuilds_the_records(tmp_path, caplog):
  from smml_jax.data import spec as spec_lib
  from test_bad_input import make_clam

  spec = make_clam(tmp_path / "raw", np.random.default_rng(0))
  spec["missing_features"] = "skip"
  h5 = sorted((tmp_path / "raw" / "h5").glob("*.h5"))[-1]
  kept = h5.read_bytes()
  h5.unlink()
  assert len(spec_lib.load_cohort(spec, tmp_path / "records")) == 5
  h5.write_bytes(kept)  # the missing slide's features arrive
  with caplog.at_level("WARNING"):
    cohort = spec_lib.load_cohort(spec, tmp_path / "records")
  assert f"added {h5}" in caplog.text
  assert len(cohort) == 6
