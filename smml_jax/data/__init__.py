"""Cohorts as tfds array_record records, patient-level splits, preprocessing and batching.

Entry points: `spec.load_cohort`, `splits.make_splits`, `normalise.fit_preprocessor`,
`pipeline.BatchIterator` (submodules are imported on use; importing this package is cheap).
"""
