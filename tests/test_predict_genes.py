"""Gene matching of experiments.predict: exact feature names, never another modality's column."""

import types
import warnings

import numpy as np
import pytest

from smml_jax.evaluate import inference as inf

RUN_GENES = {"tumour": ["IDH1_rnaseq", "IDH1_cnv", "TP53_rnaseq", "TP53_cnv"], "micro": ["CD4_rnaseq", "CD8A_rnaseq"]}


def _run(gene_names=RUN_GENES):
  """The parts of a TrainedRun that gene matching reads (names, raw training means)."""
  preprocessor = types.SimpleNamespace(
    gene_transform="zscore", mean={s: np.arange(len(g), dtype=np.float64) + 10 for s, g in gene_names.items()}
  )
  return types.SimpleNamespace(gene_names=gene_names, preprocessor=preprocessor, run_dir="runs/clam-rnaseq-cnv")


def test_cohort_with_rnaseq_only_does_not_feed_the_cnv_features_from_rnaseq():
  available = {"tumour": ["IDH1_rnaseq", "TP53_rnaseq"], "micro": ["CD4_rnaseq", "CD8A_rnaseq"]}
  with pytest.raises(inf.InferenceError) as err:
    inf.align_genes(_run(), available, where="cohort X")
  message = str(err.value)
  assert "lacks 2 gene(s)" in message and "IDH1_cnv" in message and "TP53_cnv" in message
  assert "cohort X" in message and "--missing-genes zero" in message


def test_zero_fill_says_how_many_and_uses_the_training_mean():
  available = {"tumour": ["TP53_rnaseq", "IDH1_rnaseq"], "micro": ["CD8A_rnaseq", "CD4_rnaseq"]}
  with pytest.warns(inf.MissingGenesFilled, match=r"2 of 6 gene\(s\).*IDH1_cnv, TP53_cnv"):
    alignment = inf.align_genes(_run(), available, missing_genes="zero", where="cohort X")
  raw = np.array([[1.0, 2.0]])  # TP53_rnaseq, IDH1_rnaseq
  np.testing.assert_array_equal(alignment.apply("tumour", raw), [[2.0, 11.0, 1.0, 13.0]])
  np.testing.assert_array_equal(alignment.apply("micro", raw), [[2.0, 1.0]])


def test_expression_file_symbols_are_the_rnaseq_features_only():
  run = _run()
  with pytest.raises(inf.InferenceError, match="IDH1_cnv, TP53_cnv"):
    inf.align_genes(run, ["IDH1", "TP53", "CD4", "CD8A"])
  exact = ["TP53_cnv", "IDH1", "TP53", "CD4", "CD8A", "IDH1_cnv"]
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # nothing filled, nothing said
    alignment = inf.align_genes(run, exact)
  np.testing.assert_array_equal(alignment.columns["tumour"], [1, 5, 2, 0])
  np.testing.assert_array_equal(alignment.columns["micro"], [3, 4])


def test_plain_symbol_runs_match_plain_symbols_exactly():
  run = _run({"tumour": ["IDH1", "TP53"], "micro": ["CD4"]})
  with pytest.raises(inf.InferenceError, match="TP53"):
    inf.align_genes(run, {"tumour": ["IDH1", "TP53_rnaseq"], "micro": ["CD4"]})
