"""docs/byo_data.md's worked example, run from the page itself so the guide cannot rot.

The script, the two spec files and the commands are read out of the page's fenced blocks
(```python file=..., ```yaml file=..., ```bash run); the study is built from the real PORPOISE
TCGA-BLCA table in ../shared/data, with random features in both TRIDENT's and CLAM's folders.
"""

from __future__ import annotations

import json
import pathlib
import re
import shlex

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import shared_data_dir
from smml_jax.data import spec as spec_lib

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "byo_data.md"
BLOCK = re.compile(r"^```(\w+) (file=(\S+)|run)\n(.*?)^```$", re.M | re.S)
# Appended to the page's train command: one epoch of a tiny model (the page's command is unchanged).
TINY = {
  "model_options": {
    "heads": 2,
    "dim_head": 8,
    "offset_groups": 2,
    "cpb_hidden": 8,
    "snn_widths": [8, 8, 8, 32],
    "dim": 32,
  },
  "train": {"batch_size": 4, "eval_batch_size": 4},
}


def _blocks() -> tuple[dict[str, str], list[str]]:
  """(file name -> text, command lines) of the page's marked blocks."""
  files, commands = {}, []
  for _, _, name, body in BLOCK.findall(DOC.read_text()):
    if name:
      files[name] = body
    else:
      commands += [line for line in body.splitlines() if line.strip()]
  return files, commands


def _porpoise() -> pathlib.Path:
  root = shared_data_dir() / "mahmoodlab-PORPOISE"
  if not (root / "datasets_csv_mutsig/tcga_blca_all_clean.csv.zip").is_file():
    pytest.fail(f"shared data {root} is missing the TCGA-BLCA table", pytrace=False)
  return root


@pytest.fixture(scope="module")
def study(tmp_path_factory):
  """A folder holding my_study/ (built by the page's script) and the page's spec files."""
  files, commands = _blocks()
  assert set(files) == {"make_example.py", "my_study/trident.yaml", "my_study/clam.yaml"}
  assert [c.split()[:3] for c in commands] == [
    ["python", "-m", "experiments.run"],
    ["python", "-m", "experiments.predict"],
  ]
  work = tmp_path_factory.mktemp("byo")
  namespace = {"__name__": "byo_example"}
  exec(compile(files["make_example.py"], str(DOC), "exec"), namespace)  # noqa: S102
  namespace["make_study"](_porpoise(), work / "my_study")
  for name, text in files.items():
    if name.endswith(".yaml"):
      (work / name).write_text(text)
  return work, commands


def test_both_layouts_of_the_page_give_the_same_cohort(study, tmp_path):
  work, _ = study
  table = pd.read_csv(work / "my_study/clinical.csv")
  trident = spec_lib.load_cohort(work / "my_study/trident.yaml", tmp_path / "records")
  clam = spec_lib.load_cohort(work / "my_study/clam.yaml", tmp_path / "records")
  assert trident.path != clam.path
  assert trident.feature_dim == clam.feature_dim == 16  # read from the files
  assert list(trident.slides["slide_id"]) == list(table["slide_id"])
  np.testing.assert_array_equal(trident.slides["event"], 1 - table["censorship"])
  for key in ("tumour", "micro"):
    assert trident.gene_names[key] == clam.gene_names[key]
    np.testing.assert_array_equal(trident.genes(key), clam.genes(key))
  blca = pd.read_csv(_porpoise() / "datasets_csv_mutsig/tcga_blca_all_clean.csv.zip")
  blca = blca.set_index("slide_id").loc[table["slide_id"]]
  np.testing.assert_allclose(trident.genes("tumour"), blca[trident.gene_names["tumour"]], rtol=1e-6)
  for i in range(len(trident)):
    a, b = trident.source[i], clam.source[i]
    np.testing.assert_array_equal(a["patches"], b["patches"])
    np.testing.assert_array_equal(a["tissue_mask"], b["tissue_mask"])
    assert a["tissue_mask"].any() and not a["tissue_mask"].all()  # placed, not tiled


@pytest.mark.slow  # trains through the CLI: a minute or more on 2 busy cores
def test_the_page_trains_and_predicts_through_the_clis(study, monkeypatch, capsys):
  from experiments import predict as predict_cli
  from experiments import run as run_cli

  work, commands = study
  monkeypatch.chdir(work)
  (work / "tiny.yaml").write_text(yaml.safe_dump(TINY))
  mains = {"experiments.run": run_cli.main, "experiments.predict": predict_cli.main}
  extra = {
    "experiments.run": ["--epochs", "1", "--config", "tiny.yaml", "--no-progress", "--data-dir", "records"],
    "experiments.predict": ["--data-dir", "records"],
  }
  for command in commands:
    argv = shlex.split(command)
    assert mains[argv[2]](argv[3:] + extra[argv[2]]) == 0, capsys.readouterr().err
  run = work / "runs/my_study"
  summary = json.loads((run / "summary.json").read_text())
  assert summary["task"] == "survival" and np.isfinite(summary["test"]["c_index"])
  preds = pd.read_csv(run / "predictions/clam-all/predictions.csv")
  assert len(preds) == len(pd.read_csv(work / "my_study/clinical.csv"))
  logged = pd.DataFrame([json.loads(line) for line in (run / "predictions_test.jsonl").read_text().splitlines()])
  assert len(logged)
  mine = preds.set_index("slide_id").loc[logged["slide_id"]]
  np.testing.assert_allclose(mine["risk"].to_numpy(), logged["risk"].to_numpy(), atol=1e-5)
