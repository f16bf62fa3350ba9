"""Building a local cohort prints one line of ours, not TFDS's download/config chatter."""

import yaml

from smml_jax.data.spec import load_cohort


def test_building_records_is_quiet(tmp_path, capfd):
  spec = tmp_path / "tiny.yaml"
  spec.write_text(
    yaml.safe_dump(
      {
        "layout": "synthetic",
        "n_patients": 12,
        "grid_side": 4,
        "feature_dim": 4,
        "n_genes_tumour": 3,
        "n_genes_micro": 3,
      }
    )
  )
  cohort = load_cohort(str(spec), str(tmp_path / "records"))
  assert len(cohort.slides) >= 12
  out, err = capfd.readouterr()
  text = out + err
  for noise in (
    "Unknown size",
    "Using custom data configuration",
    "Generating splits",
    "Shuffling",
    "downloaded and prepared",
  ):
    assert noise not in text, f"{noise!r} printed:\n{text}"
  assert "writing cohort records" in text  # what the user does see, once
  load_cohort(str(spec), str(tmp_path / "records"))
  out, err = capfd.readouterr()
  assert "writing cohort records" not in out + err  # reused
