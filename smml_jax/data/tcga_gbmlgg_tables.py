"""The public TCGA GBM-LGG tables, read and checked: raw features, subspaces and labels per source.

`load_raw(data_root, source)` parses one source's tables into patient-level arrays (from which
`tcga_gbmlgg.load_gbmlgg` builds the cohort). The tables are read from a folder laid out like
`../shared/data` (`data_root`):

`source='pnas'`: the PathomicFusion / SCNN tables, 769 patients
  (`diegom4riano-nebius-fmri-adversarial/data/TCGA_GBMLGG/`):
  `all_dataset.csv` (features, survival), `grade_data.csv` (grade, histology; CRLF) and
  `pnas_splits.csv` (the 15 splits, CR-only; read by `splits.py`). Their 80 genomic columns are
  `codeletion`, `idh mutation`, 41 focal gene-level copy-number calls (`EGFR` ... `PTEN`, in
  {-2..2}) and 37 arm-level copy-number values (`1q` ... `22q`). There is NO RNA in these tables, and
  copy number measured in bulk tumour is a property of the tumour genome, so:
    tumour = all 80 columns;  micro = EMPTY (`x_micro` has shape (P, 0), `has_micro` is False).
  A two-subspace model (`subspace-genomic`) therefore cannot run on this source; run the `pnas15`
  splits on `source='porpoise'` instead (the 490 patients the two sources share, see splits.py).
  Survival: `Survival months` holds DAYS (checked against `grade_data.csv`); event = 1 - `censored`.

`source='porpoise'`: the PORPOISE / MCAT table, 569 patients
  (`mahmoodlab-PORPOISE/datasets_csv_mutsig/tcga_gbmlgg_all_clean.csv.zip`, one row per slide; the
  first row per `case_id` is kept, the rows of a patient being identical). Genomic columns:
  1544 `<GENE>_rnaseq` z-scores, 30 `<GENE>_cnv` calls and 16 `<GENE>_mut` flags. Subspaces:
    tumour = every `_cnv` and `_mut` column (somatic alterations of the tumour genome) plus the
             `_rnaseq` of genes in the `Oncogenes` or `Tumor Suppressor Genes` columns of
             `mahmoodlab-PORPOISE/datasets_csv/signatures.csv`;
    micro  = the `_rnaseq` of genes in the ESTIMATE Immune141_UP / Stromal141_UP lists
             (`mdozmorov-Immuno_notes/data/ESTIMATE/ncomms3612-s2.xlsx`, sheet `gene`) or the
             CIBERSORT LM22 matrix (`mdozmorov-Immuno_notes/data/Cibersoft/LM22.txt`).
  A gene on both sides (e.g. CD74, LCK, PRF1, PDGFRB: 33 genes) is assigned to micro: in bulk
  RNA its expression is dominated by the infiltrating immune / stromal cells the signature was
  built from. The two subspaces are therefore disjoint. RNA of genes in neither list is not used.
  Survival: `survival_months` * 30.44 = days; event = 1 - `censorship`.
  Grade comes from the SurvPath clinical table
  (`mahmoodlab-SurvPath/datasets_csv/clinical_data/tcga_gbmlgg_clinical.csv`: G2/G3, oncotree GBM
  = grade 4). The PORPOISE table has no 1p/19q column, so IDH and 1p/19q status (hence diagnosis and
  subtype) come from the PNAS `all_dataset.csv` for the patients both sources share; the others get
  -1 (unknown). CDKN2A comes from the table's own `CDKN2A_cnv`.
"""

from __future__ import annotations

import functools
import pathlib
from typing import Sequence

import numpy as np
import pandas as pd

from smml_jax.data import labels

DAYS_PER_MONTH = 30.44

PNAS_DIR = "diegom4riano-nebius-fmri-adversarial/data/TCGA_GBMLGG"
PNAS_FEATURES = f"{PNAS_DIR}/all_dataset.csv"
PNAS_GRADE = f"{PNAS_DIR}/grade_data.csv"
PNAS_SPLITS = f"{PNAS_DIR}/pnas_splits.csv"
PORPOISE_TABLE = "mahmoodlab-PORPOISE/datasets_csv_mutsig/tcga_gbmlgg_all_clean.csv.zip"
PORPOISE_SPLITS = "mahmoodlab-PORPOISE/splits/5foldcv/tcga_gbmlgg/splits_{fold}.csv"
SIGNATURES = "mahmoodlab-PORPOISE/datasets_csv/signatures.csv"
SURVPATH_CLINICAL = "mahmoodlab-SurvPath/datasets_csv/clinical_data/tcga_gbmlgg_clinical.csv"
ESTIMATE = "mdozmorov-Immuno_notes/data/ESTIMATE/ncomms3612-s2.xlsx"
LM22 = "mdozmorov-Immuno_notes/data/Cibersoft/LM22.txt"

TUMOUR_FAMILIES = ("Oncogenes", "Tumor Suppressor Genes")
ESTIMATE_SETS = ("Immune141_UP", "Stromal141_UP")
# The IDH and 1p/19q status columns of each source.
PNAS_IDH_CODEL = ("idh mutation", "codeletion")
PORPOISE_IDH_CODEL = ("IDH1_mut",)
_PNAS_ARMS = (
  "1q",
  "2p",
  "2q",
  "3p",
  "3q",
  "4p",
  "4q",
  "5p",
  "5q",
  "6p",
  "6q",
  "7p",
  "7q",
  "8p",
  "8q",
  "9p",
  "9q",
  "10p",
  "10q",
  "11p",
  "11q",
  "12p",
  "12q",
  "13q",
  "14q",
  "15q",
  "16p",
  "16q",
  "17p",
  "17q",
  "18p",
  "18q",
  "19p",
  "20p",
  "20q",
  "21q",
  "22q",
)


class GBMLGGDataError(ValueError):
  """A TCGA GBM-LGG table is missing or does not have the expected layout."""


def _path(data_root: pathlib.Path, rel: str) -> pathlib.Path:
  path = data_root / rel
  if not path.is_file():
    raise GBMLGGDataError(f"missing file {path} (expected {rel} under --data-root {data_root})")
  return path


def _read_csv(data_root: pathlib.Path, rel: str, required: Sequence[str], **kw) -> pd.DataFrame:
  path = _path(data_root, rel)
  try:
    # pandas' C parser accepts LF, CRLF and CR-only line endings alike.
    df = pd.read_csv(path, **kw)
  except (pd.errors.ParserError, UnicodeDecodeError, OSError) as e:
    raise GBMLGGDataError(f"cannot read {path}: {e}") from e
  _require_columns(df, required, path)
  return df


def _require_columns(df: pd.DataFrame, required: Sequence[str], path) -> None:
  missing = [c for c in required if c not in df.columns]
  if missing:
    raise GBMLGGDataError(f"{path}: missing column(s) {missing}; found {list(df.columns)[:12]}...")


def _status(values) -> np.ndarray:
  """0/1 floats with NaN -> int64 with -1."""
  v = np.asarray(values, np.float64)
  out = np.full(v.shape, labels.MISSING, np.int64)
  known = ~np.isnan(v)
  if np.any(~np.isin(v[known], (0.0, 1.0))):
    raise GBMLGGDataError(f"status column holds values other than 0/1: {np.unique(v[known])}")
  out[known] = v[known].astype(np.int64)
  return out


def _grade_codes(values, path, column) -> np.ndarray:
  out = np.full(len(values), labels.MISSING, np.int64)
  for i, v in enumerate(values):
    if isinstance(v, float) and np.isnan(v):
      continue
    key = str(v).strip()
    key = key[:-2] if key.endswith(".0") else key
    if key not in labels.GRADE_CODES:
      raise GBMLGGDataError(
        f"{path}: column {column!r} row {i}: unknown grade {v!r}; expected one of {sorted(labels.GRADE_CODES)}"
      )
    out[i] = labels.GRADE_CODES[key]
  return out


def _pnas_tables(data_root: pathlib.Path) -> pd.DataFrame:
  """all_dataset.csv joined with grade_data.csv on `TCGA ID`, one row per patient."""
  feats = _read_csv(data_root, PNAS_FEATURES, ["TCGA ID", "censored", "Survival months", *PNAS_IDH_CODEL, "CDKN2A"])
  grade = _read_csv(data_root, PNAS_GRADE, ["TCGA ID", "Grade"])
  for df, rel in ((feats, PNAS_FEATURES), (grade, PNAS_GRADE)):
    dup = df["TCGA ID"][df["TCGA ID"].duplicated()]
    if len(dup):
      raise GBMLGGDataError(f"{data_root / rel}: duplicated TCGA ID {dup.iloc[0]!r}")
  merged = feats.merge(grade[["TCGA ID", "Grade"]], on="TCGA ID", how="left", validate="1:1")
  return merged


def _pnas_feature_columns(df: pd.DataFrame) -> list[str]:
  """`codeletion` .. `22q`: status, focal gene CNV and arm CNV columns (80 in the published file)."""
  cols = list(df.columns)
  start, stop = cols.index("codeletion"), cols.index("Grade")
  feature_cols = [c for c in cols[start:stop]]
  missing_arms = [a for a in _PNAS_ARMS if a not in feature_cols]
  if missing_arms:
    raise GBMLGGDataError(f"{PNAS_FEATURES}: missing arm-level column(s) {missing_arms}")
  return feature_cols


def _load_pnas(data_root: pathlib.Path) -> dict:
  df = _pnas_tables(data_root)
  cols = _pnas_feature_columns(df)
  grade = _grade_codes(df["Grade"].to_numpy(object), data_root / PNAS_GRADE, "Grade")
  return dict(
    case_ids=df["TCGA ID"].to_numpy(str),
    table=df[cols].astype(np.float64),
    tumour=cols,
    micro=[],
    idh=_status(df["idh mutation"]),
    codel=_status(df["codeletion"]),
    cdkn2a=labels.cdkn2a_deleted_from_copy_number(df["CDKN2A"].to_numpy(np.float64)),
    grade=grade,
    surv_time=df["Survival months"].to_numpy(np.float64),  # the values are days
    event=1 - df["censored"].to_numpy(np.int64),
  )


def _gene_list_column(df: pd.DataFrame, column: str) -> set[str]:
  return {str(g).strip() for g in df[column].dropna()}


def _tumour_genes(data_root: pathlib.Path) -> set[str]:
  sig = _read_csv(data_root, SIGNATURES, list(TUMOUR_FAMILIES))
  return set().union(*(_gene_list_column(sig, f) for f in TUMOUR_FAMILIES))


def _micro_genes(data_root: pathlib.Path) -> set[str]:
  path = _path(data_root, ESTIMATE)
  try:
    est = pd.read_excel(path, sheet_name="gene", header=1)
  except (ValueError, OSError) as e:
    raise GBMLGGDataError(f"cannot read sheet 'gene' of {path}: {e}") from e
  _require_columns(est, ["Gene", "Set"], f"{path} (sheet 'gene')")
  est_genes = _gene_list_column(est[est["Set"].isin(ESTIMATE_SETS)], "Gene")
  if not est_genes:
    raise GBMLGGDataError(f"{path}: no genes in Set {ESTIMATE_SETS}")
  lm22 = _read_csv(data_root, LM22, ["Gene symbol"], sep="\t")
  return est_genes | _gene_list_column(lm22, "Gene symbol")


def _load_porpoise(data_root: pathlib.Path) -> dict:
  df = _read_csv(data_root, PORPOISE_TABLE, ["case_id", "survival_months", "censorship"])
  df = df.drop_duplicates("case_id", keep="first").reset_index(drop=True)
  if "CDKN2A_cnv" not in df.columns or "IDH1_mut" not in df.columns:
    raise GBMLGGDataError(f"{data_root / PORPOISE_TABLE}: missing column CDKN2A_cnv or IDH1_mut")
  alterations = [c for c in df.columns if c.endswith(("_cnv", "_mut"))]
  rna = {c[: -len("_rnaseq")]: c for c in df.columns if c.endswith("_rnaseq")}
  micro_genes, tumour_genes = _micro_genes(data_root), _tumour_genes(data_root)
  micro = [rna[g] for g in sorted(micro_genes & rna.keys())]
  tumour = alterations + [rna[g] for g in sorted((tumour_genes - micro_genes) & rna.keys())]

  clin = _read_csv(data_root, SURVPATH_CLINICAL, ["case_id", "grade", "subtype"])
  clin = clin.drop_duplicates("case_id", keep="first").set_index("case_id")
  rows = clin.reindex(df["case_id"])
  grade_text = np.where(rows["subtype"].to_numpy(object) == "GBM", "G4", rows["grade"].to_numpy(object))
  grade = _grade_codes(grade_text, data_root / SURVPATH_CLINICAL, "grade")

  # IDH and 1p/19q from the PNAS table where the patient is there (PORPOISE has no 1p/19q).
  pnas = _read_csv(data_root, PNAS_FEATURES, ["TCGA ID", *PNAS_IDH_CODEL])
  pnas = pnas.drop_duplicates("TCGA ID").set_index("TCGA ID").reindex(df["case_id"])
  return dict(
    case_ids=df["case_id"].to_numpy(str),
    table=df[tumour + micro].astype(np.float64),
    tumour=tumour,
    micro=micro,
    idh=_status(pnas["idh mutation"]),
    codel=_status(pnas["codeletion"]),
    cdkn2a=labels.cdkn2a_deleted_from_copy_number(df["CDKN2A_cnv"].to_numpy(np.float64)),
    grade=grade,
    surv_time=df["survival_months"].to_numpy(np.float64) * DAYS_PER_MONTH,
    event=1 - df["censorship"].to_numpy(np.int64),
  )


@functools.lru_cache(maxsize=4)
def load_raw(data_root: str, source: str) -> dict:
  """Parsed tables, cached per folder (the xlsx alone takes seconds); callers copy arrays out."""
  root = pathlib.Path(data_root)
  return _load_pnas(root) if source == "pnas" else _load_porpoise(root)
