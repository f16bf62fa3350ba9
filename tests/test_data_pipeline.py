"""BatchIterator (grain): deterministic shuffling, padding / dropping, per-host shards, prefetch,
and a checkpointable position within the epoch."""

from __future__ import annotations

import numpy as np
import pytest

from smml_jax.data import normalise, pipeline, spec as spec_lib, splits as splits_lib

SMALL = {
  "layout": "synthetic",
  "n_patients": 20,
  "grid_side": 2,
  "feature_dim": 4,
  "n_genes_tumour": 3,
  "n_genes_micro": 2,
  "seed": 1,
}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
  return spec_lib.load_cohort(SMALL, tmp_path_factory.mktemp("records"))


def _ids(batches):
  return [b["slide_id"].tolist() for b in batches]


def test_epochs_are_deterministic_and_differ(cohort):
  idx = np.arange(len(cohort) // 4 * 4)  # whole batches only, so every epoch holds all of idx
  run = lambda epoch: _ids(pipeline.BatchIterator(cohort.source, idx, 4, seed=3, epoch=epoch))
  assert run(0) == run(0)
  assert run(0) != run(1)
  assert sorted(sum(run(1), [])) == sorted(sum(run(0), []))
  plain = _ids(pipeline.BatchIterator(cohort.source, idx[:8], 4, shuffle=False))
  assert sum(plain, []) == cohort.slides["slide_id"].tolist()[:8]


def test_padding_and_dropping_the_last_batch(cohort):
  idx = np.arange(10)
  dropped = list(pipeline.BatchIterator(cohort.source, idx, 4, drop_remainder=True))
  assert len(dropped) == 2 and all(b["mask"].all() for b in dropped)
  padded = list(pipeline.BatchIterator(cohort.source, idx, 4, drop_remainder=False, seed=5))
  assert len(padded) == 3
  last = padded[-1]
  assert last["patches"].shape == (4, 4, 4) and last["mask"].tolist() == [True, True, False, False]
  real = sum((b["slide_id"][b["mask"]].tolist() for b in padded), [])
  assert sorted(real) == sorted(cohort.slides["slide_id"].iloc[:10])


def test_hosts_get_contiguous_slices_of_each_global_batch(cohort):
  idx = np.arange(len(cohort))
  whole = list(pipeline.BatchIterator(cohort.source, idx, 6, seed=2, drop_remainder=False))
  shards = [
    list(pipeline.BatchIterator(cohort.source, idx, 6, seed=2, drop_remainder=False, process_index=p, process_count=3))
    for p in range(3)
  ]
  assert all(len(s) == len(whole) for s in shards)
  for b, parts in zip(whole, zip(*shards)):
    assert all(p["patches"].shape[0] == 2 for p in parts)
    np.testing.assert_array_equal(np.concatenate([p["slide_id"] for p in parts]), b["slide_id"])
    np.testing.assert_array_equal(np.concatenate([p["mask"] for p in parts]), b["mask"])
  with pytest.raises(ValueError, match="divisible"):
    pipeline.BatchIterator(cohort.source, idx, 5, process_count=2)


def test_batches_match_records_and_preprocess(cohort):
  parts = splits_lib.make_splits(cohort, "original", seed=0)
  pre = normalise.fit_preprocessor(cohort, parts["train"])
  batch = next(iter(pipeline.BatchIterator(cohort.source, parts["train"], 4, seed=0, preprocess=pre)))
  assert batch["patches"].dtype == np.float32 and batch["slide_id"].dtype.kind == "U"
  assert batch["surv_time"].dtype == np.float32 and batch["grade"].dtype == np.int64
  rows = [cohort.slides.index[cohort.slides["slide_id"] == s][0] for s in batch["slide_id"]]
  np.testing.assert_allclose(batch["genes_tumour"], pre.transform_genes("tumour", cohort.genes("tumour", rows)))
  np.testing.assert_array_equal(batch["surv_bin"], pre.survival_bins(cohort.slides["surv_time"].to_numpy()[rows]))
  np.testing.assert_allclose(batch["patches"][0], np.asarray(cohort.source[rows[0]]["patches"], np.float32))


def test_reader_errors_reach_the_consumer_and_early_exit_is_clean(cohort):
  class Failing:
    def __len__(self):
      return 8

    def __getitem__(self, i):
      if i == 5:
        raise OSError("disk gone")
      return cohort.source[i]

  with pytest.raises(OSError, match="disk gone"):
    list(pipeline.BatchIterator(Failing(), np.arange(8), 2, shuffle=False))
  it = iter(pipeline.BatchIterator(cohort.source, np.arange(len(cohort)), 2, prefetch=1))
  next(it)
  it.close()  # stops the producer thread without hanging


def test_prefetch_to_device_keeps_order_and_host_strings(cohort):
  import jax

  iterator = pipeline.BatchIterator(cohort.source, np.arange(8), 2, seed=0)
  batches = list(iterator)
  on_device = list(pipeline.prefetch_to_device(iterator, size=2))
  assert len(on_device) == len(batches)
  for host, dev in zip(batches, on_device):
    assert isinstance(dev["patches"], jax.Array)
    np.testing.assert_array_equal(np.asarray(dev["patches"]), host["patches"])
    assert isinstance(dev["slide_id"], np.ndarray)


@pytest.mark.parametrize("on_device", [False, True])
def test_iterator_state_resumes_mid_epoch_with_the_same_batches(cohort, on_device):
  make = lambda: pipeline.BatchIterator(cohort.source, np.arange(len(cohort)), 4, seed=7, epoch=2, drop_remainder=False)
  start = (lambda it: pipeline.prefetch_to_device(it, size=2)) if on_device else iter
  whole = [b["slide_id"].tolist() for b in start(make())]
  assert len(whole) == len(make()) >= 4
  first = start(make())
  head = [next(first)["slide_id"].tolist() for _ in range(2)]
  state = first.get_state()
  pipeline.close(first)
  resumed = start(make())
  resumed.set_state(state)
  assert head + [b["slide_id"].tolist() for b in resumed] == whole


def test_process_shard_comes_from_jax():
  import jax

  assert pipeline.jax_process_shard() == (jax.process_index(), jax.process_count())
