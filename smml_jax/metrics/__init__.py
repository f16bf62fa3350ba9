"""Metrics of predictions: host-side split metrics and the jit-able concordance index."""
