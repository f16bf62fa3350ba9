"""The one error type the data layer raises for bad input, and a did-you-mean for its messages."""

from __future__ import annotations

import difflib
from typing import Iterable


class CohortError(ValueError):
  """Bad cohort input: names the file, row or field and what was expected."""


def did_you_mean(name: str, choices: Iterable[str], template: str = " (did you mean {!r}?)") -> str:
  """`template` filled with the closest of `choices` to a misspelt `name`; '' when none is close."""
  close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
  return template.format(close[0]) if close else ""
