"""A cohort's expression as one matrix file, joined to the slides on case id.

The matrix is genes x samples (genes as rows, the first column their symbols, one column per case
id) or its transpose (cases as rows); TSV, CSV (optionally gzipped) or parquet. `orientation: auto`
decides by where the cohort's case ids are: in the header (genes x samples) or in the first column
(samples x genes); ids in both or neither is an error asking for the orientation. A gene listed
twice keeps its first row (as every reader here); a case listed twice is an error.

`join_expression` returns the per-slide rows and the cases the matrix lacks, so a caller that
tolerates missing expression (a modality mask) can use it; `require_complete` is the default
refusal listing them.
"""

from __future__ import annotations

import os
import pathlib
from typing import Sequence

import numpy as np
import pandas as pd

from smml_jax.data import genes as genes_lib
from smml_jax.data.errors import CohortError

ORIENTATIONS = ("auto", "genes_by_samples", "samples_by_genes")


def _read(path: pathlib.Path) -> pd.DataFrame:
  if not path.is_file():
    raise CohortError(f"expression matrix {path} does not exist")
  if "".join(path.suffixes).lower().endswith(".parquet"):
    try:
      table = pd.read_parquet(path)
    except Exception as e:  # pyarrow's errors do not name the file
      raise CohortError(f"cannot read expression matrix {path}: {e}") from e
    # A parquet index (e.g. written by DataFrame.to_parquet) becomes the first column.
    return table.reset_index() if not isinstance(table.index, pd.RangeIndex) else table
  return genes_lib.read_table(path, "expression matrix")


def read_expression_matrix(path: str | os.PathLike, case_ids: Sequence[str], orientation: str = "auto") -> pd.DataFrame:
  """The matrix as a (cases, genes) float64 DataFrame indexed by case id, columns gene symbols.

  Args:
    path: the matrix file.
    case_ids: the cohort's case ids (used by `auto` to tell the orientation).
    orientation: auto, genes_by_samples (genes as rows) or samples_by_genes (cases as rows).
  """
  path = pathlib.Path(path)
  if orientation not in ORIENTATIONS:
    raise CohortError(f"expression matrix {path}: orientation {orientation!r}; expected one of {list(ORIENTATIONS)}")
  table = _read(path)
  if table.shape[1] < 2 or table.empty:
    raise CohortError(
      f"expression matrix {path}: {table.shape[0]} rows x {table.shape[1]} "
      "columns; expected a first column of names and one column per case (or "
      "per gene)"
    )
  first = table.iloc[:, 0].astype(str).str.strip()
  header = pd.Index(table.columns[1:]).astype(str).str.strip()
  ids = set(map(str, case_ids))
  in_header, in_rows = len(ids & set(header)), len(ids & set(first))
  if orientation == "auto":
    if bool(in_header) == bool(in_rows):
      where = "both the header and the first column" if in_header else "neither the header nor the first column"
      raise CohortError(
        f"expression matrix {path}: the cohort's case ids (e.g. "
        f"{sorted(ids)[:2]}) are in {where}; set `expression.orientation` to "
        "genes_by_samples (genes as rows) or samples_by_genes (cases as rows)"
      )
    orientation = "genes_by_samples" if in_header else "samples_by_genes"
  values = table.iloc[:, 1:].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
  if orientation == "genes_by_samples":
    matrix = pd.DataFrame(values.T, index=header, columns=first)
  else:
    matrix = pd.DataFrame(values, index=first, columns=header)
  dup = matrix.index[matrix.index.duplicated()]
  if len(dup):
    raise CohortError(
      f"expression matrix {path} ({orientation}): case {dup[0]!r} appears more "
      "than once; expected one column (or row) per case"
    )
  matrix = matrix.loc[:, ~matrix.columns.duplicated(keep="first")]
  matrix.attrs.update(path=str(path), orientation=orientation)
  return matrix


def join_expression(
  matrix: pd.DataFrame, case_ids: Sequence[str], genes: Sequence[str]
) -> tuple[np.ndarray, list[str]]:
  """(n_slides, G) float64 values of `genes` for each slide's case, NaN rows where missing.

  Returns the values and the sorted case ids the matrix lacks.
  """
  ids = [str(c) for c in case_ids]
  missing = sorted(set(ids) - set(matrix.index))
  values = matrix.reindex(index=ids, columns=list(genes)).to_numpy(np.float64)
  return values, missing


def require_complete(
  matrix: pd.DataFrame, missing: Sequence[str], values: np.ndarray, case_ids: Sequence[str], genes: Sequence[str]
) -> None:
  """Refuses missing cases (listing them) and non-finite values (naming case and gene)."""
  path = matrix.attrs.get("path", "expression matrix")
  if missing:
    raise CohortError(
      f"expression matrix {path}: {len(missing)} case(s) of the cohort have no "
      f"expression ({matrix.attrs.get('orientation', '')}): {list(missing)}"
    )
  bad = ~np.isfinite(values)
  if bad.any():
    r, c = np.argwhere(bad)[0]
    raise CohortError(f"expression matrix {path}: gene {genes[c]!r} of case {case_ids[r]!r} is not a finite number")
