"""The one error type the data layer raises for bad input."""

from __future__ import annotations


class CohortError(ValueError):
  """Bad cohort input: names the file, row or field and what was expected."""
