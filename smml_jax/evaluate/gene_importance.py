"""Gene importance of a trained model: integrated gradients per gene, ranked per subspace."""

from __future__ import annotations

import pathlib
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from smml_jax.evaluate import interpret


def gene_importance(
  apply_fn: Callable[..., Any],
  params: Any,
  batches: Iterable[Mapping],
  gene_names: Mapping[str, Sequence[str]],
  *,
  task,
  steps: int = 32,
  alpha_batch_size: Optional[int] = None,
  max_slides: Optional[int] = None,
) -> dict[str, pd.DataFrame]:
  """Integrated-gradients gene ranking per subspace over the slides of `batches`.

  The explained scalar is the probability of the class predicted at the real input
  (classification) or the risk -sum_k S_k (survival); the baseline is 0 for every normalised gene
  (the training mean). Rankings use the mean |attribution| over the real slides.

  Args:
    apply_fn: `module.apply`, called as apply_fn({'params': params}, batch, train=False).
    params: the model parameters.
    batches: preprocessed batches with 'patches', 'genes_tumour', 'genes_micro' and 'mask' (B,).
    gene_names: {'tumour': Gt names, 'micro': Gm names} in input order.
    task: the run's `smml_jax.tasks.Task` (what the logits mean).
    steps: trapezoid intervals of the path integral.
    alpha_batch_size: alphas evaluated at once (None: all; lower it to save memory).
    max_slides: stop after this many real slides.

  Returns:
    {'tumour': DataFrame, 'micro': DataFrame} of `interpret.top_genes` (every gene, ranked) over
    the first min(max_slides, number of slides) slides.
  """

  @jax.jit
  def attribute(p, batch):
    return interpret.model_gene_attributions(
      apply_fn, {"params": p}, batch, task, steps=steps, alpha_batch_size=alpha_batch_size
    )

  chunks: dict[str, list[np.ndarray]] = {k: [] for k in interpret.GENE_INPUTS}
  seen = 0
  for batch in batches:
    mask = np.asarray(batch["mask"], bool)
    inputs = {k: jnp.asarray(batch[k]) for k in ("patches", *interpret.GENE_INPUTS)}
    out = attribute(params, inputs)
    for k in interpret.GENE_INPUTS:
      chunks[k].append(np.asarray(out[k], np.float64)[mask])
    seen += int(mask.sum())
    if max_slides is not None and seen >= max_slides:
      break
  if not seen:
    raise ValueError("gene_importance: no slide to attribute")
  tables = {}
  for s in ("tumour", "micro"):
    attributions = np.concatenate(chunks[f"genes_{s}"])[:max_slides]
    tables[s] = interpret.top_genes(attributions, list(gene_names[s]))
  return tables


def gene_importance_csv(tables: Mapping[str, pd.DataFrame], path: pathlib.Path) -> pathlib.Path:
  """Every gene of both subspaces, ranked within its subspace: subspace, rank, gene, ...."""
  frame = pd.concat([t.assign(subspace=s) for s, t in tables.items()], ignore_index=True)
  columns = ["subspace", "rank", "gene", "mean_abs_attribution", "mean_attribution", "std_abs_attribution"]
  frame = frame[[c for c in columns if c in frame.columns]]
  frame.to_csv(path, index=False)
  return path
