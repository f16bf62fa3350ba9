"""Port the original PyTorch state_dict to Flax params.

Input is a flat mapping of torch parameter names to arrays: load a `.pth` with torch yourself
(`{k: v.numpy() for k, v in torch.load(path).items()}`) or pass an `.npz` path; this module never
unpickles anything. Every tensor is checked: a missing, unexpected or mis-shaped one raises
`ConversionError` naming it.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Callable, Iterable, Mapping

import flax
import numpy as np

from smml_jax.models.subspace_net import SubspaceConfig


class ConversionError(ValueError):
  """A state_dict that does not fit the Flax model."""


Transform = Callable[[np.ndarray, tuple[int, ...]], np.ndarray]


def _linear(w, shape):  # (out, in) -> (in, out)
  return w.T


def _identity(w, shape):
  return w


def _grouped_1x1(w, shape):  # (out, in/G, 1[, 1]) -> (G, in/G, out/G)
  g, cin, cout = shape
  return w.reshape(g, cout, cin).transpose(0, 2, 1)


def _dense_1x1(w, shape):  # (out, in, 1[, 1]) -> (in, out)
  return w.reshape(w.shape[0], w.shape[1]).T


def _depthwise(w, shape):  # (C, 1, k[, k]) -> (k[, k], 1, C)
  return np.moveaxis(w, (0, 1), (-1, -2))


@dataclasses.dataclass(frozen=True)
class Rule:
  torch_name: str
  flax_path: str
  transform: Transform = _identity


def deform_attention_rules(torch_prefix: str, flax_prefix: str, cpb_depth: int = 2) -> list[Rule]:
  """Rules for one DeformableAttention{1D,2D} module."""
  t = lambda name: f"{torch_prefix}.{name}" if torch_prefix else name
  f = lambda path: f"{flax_prefix}/{path}" if flax_prefix else path
  rules = [Rule(t(f"to_{n}.weight"), f(f"to_{n}/kernel"), _grouped_1x1) for n in "qkv"]
  rules += [
    Rule(t("to_out.weight"), f("to_out/kernel"), _dense_1x1),
    Rule(t("to_out.bias"), f("to_out/bias")),
    Rule(t("to_offsets.0.weight"), f("offset_conv_kernel"), _depthwise),
    Rule(t("to_offsets.0.bias"), f("offset_conv_bias")),
    Rule(t("to_offsets.2.weight"), f("offset_proj/kernel"), _dense_1x1),
  ]
  for i in range(cpb_depth + 1):
    name = f"rel_pos_bias.mlp.{i}" + (".0" if i < cpb_depth else "")
    rules += [Rule(t(f"{name}.weight"), f(f"cpb_{i}_kernel"), _linear), Rule(t(f"{name}.bias"), f(f"cpb_{i}_bias"))]
  return rules


def _linear_rules(torch_name: str, flax_path: str) -> list[Rule]:
  return [Rule(f"{torch_name}.weight", f"{flax_path}/kernel", _linear), Rule(f"{torch_name}.bias", f"{flax_path}/bias")]


def _layer_norm_rules(torch_name: str, flax_path: str) -> list[Rule]:
  return [Rule(f"{torch_name}.weight", f"{flax_path}/scale"), Rule(f"{torch_name}.bias", f"{flax_path}/bias")]


# Tensors the original keeps in its state_dict but never uses in the forward pass that counts.
_ORIGINAL_UNUSED = (
  r"(.*\.)?output_range",
  r"(.*\.)?output_shift",
  r"omic_net_\w+\.classifier\..*",
  r"pathomic_net_\w+\.cls_token",
  r"pathomic_net_\w+\._fc2\..*",
)


def subspace_net_rules(config: SubspaceConfig) -> tuple[list[Rule], list[str]]:
  """(rules, ignored-name patterns) for the original DeformPathomicNet state_dict."""
  if config.single_subspace:
    raise ConversionError("the original has no single-subspace model to port from")
  branch = config.branch
  attn_name = "attn2d" if branch.attention.ndim == 2 else "attn1d"
  unused_attn = "attn1d" if branch.attention.ndim == 2 else "attn2d"
  rules: list[Rule] = []
  for torch_sub, flax_sub in (("tumor", "tumour"), ("immune", "micro")):
    for i in range(len(config.snn_widths)):
      rules += _linear_rules(f"omic_net_{torch_sub}.encoder.{i}.0", f"snn_{flax_sub}/dense_{i}")
    t, f = f"pathomic_net_{torch_sub}", f"branch_{flax_sub}"
    rules += _linear_rules(f"{t}._fc1.0", f"{f}/patch_proj")
    rules += _linear_rules(f"{t}.fusion_layer.fusion_layer", f"{f}/fusion")
    rules += _layer_norm_rules(f"{t}.layer3.norm", f"{f}/layer_norm")
    if branch.separate_norms:  # a port starts both norms from the original's shared one
      rules += _layer_norm_rules(f"{t}.layer3.norm", f"{f}/layer_norm_kv")
    rules += deform_attention_rules(f"{t}.layer3.{attn_name}", f"{f}/attention", branch.attention.cpb_depth)
    rules += _layer_norm_rules(f"{t}.norm", f"{f}/final_norm")
    rules += _linear_rules(f"{t}.pooler.dense", f"{f}/pooler")
    rules += _linear_rules(f"{t}.multimodal_projection", f"{f}/projection")
    rules += _linear_rules(f"classifier_{torch_sub}.0", f"classifier_{flax_sub}")
  rules += _linear_rules("classifier", "classifier")
  ignored = list(_ORIGINAL_UNUSED) + [rf"pathomic_net_\w+\.layer3\.{unused_attn}\..*"]
  return rules, ignored


def load_state_dict(source: str | os.PathLike | Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
  """A flat name -> float32 array mapping from a mapping or an `.npz` file (no pickle).

  With `prefix` (e.g. "param/" for the reference fixtures) only keys under it are kept, stripped.
  """
  if isinstance(source, (str, os.PathLike)):
    if not str(source).endswith(".npz"):
      raise ConversionError(
        f"{source}: expected an .npz file of arrays (load a .pth with torch yourself and pass the dict)"
      )
    with np.load(source, allow_pickle=False) as data:
      source = {k: data[k] for k in data.files}
  out = {}
  for key, value in source.items():
    if key.startswith(prefix):
      out[key[len(prefix) :]] = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)
  return out


def convert_state_dict(
  state_dict: Mapping[str, np.ndarray], template: Any, rules: Iterable[Rule], ignored: Iterable[str] = ()
) -> Any:
  """Maps a torch state_dict onto a Flax param template (e.g. `model.init(...)['params']`).

  Raises:
    ConversionError: listing every missing, unexpected and mis-shaped tensor.
  """
  flat_template = flax.traverse_util.flatten_dict(flax.core.unfreeze(template), sep="/")
  patterns = [re.compile(p) for p in ignored]
  rules = list(rules)
  used_torch = {r.torch_name for r in rules}
  problems = []
  unexpected = [k for k in state_dict if k not in used_torch and not any(p.fullmatch(k) for p in patterns)]
  problems += [f"unexpected tensor {k!r} {tuple(np.shape(state_dict[k]))}" for k in unexpected]
  out = {}
  for rule in rules:
    if rule.flax_path not in flat_template:
      problems.append(f"rule target {rule.flax_path!r} is not a parameter of the Flax model")
      continue
    if rule.torch_name not in state_dict:
      problems.append(f"missing tensor {rule.torch_name!r} (for {rule.flax_path})")
      continue
    want = tuple(flat_template[rule.flax_path].shape)
    w = np.asarray(state_dict[rule.torch_name], np.float32)
    try:
      value = rule.transform(w, want)
    except ValueError as e:
      problems.append(f"tensor {rule.torch_name!r} has shape {w.shape}, cannot map to {rule.flax_path} {want}: {e}")
      continue
    if tuple(value.shape) != want:
      problems.append(
        f"tensor {rule.torch_name!r} has shape {w.shape}: maps to {value.shape}, but {rule.flax_path} expects {want}"
      )
      continue
    out[rule.flax_path] = value
  missing = sorted(set(flat_template) - {r.flax_path for r in rules})
  problems += [f"Flax parameter {p!r} has no source tensor" for p in missing]
  if problems:
    raise ConversionError("state_dict does not fit the model:\n  " + "\n  ".join(problems))
  return flax.traverse_util.unflatten_dict(out, sep="/")


def convert_subspace_net(state_dict: Mapping[str, np.ndarray], config: SubspaceConfig, template: Any) -> Any:
  """The original DeformPathomicNet's state_dict -> SubspaceNet params."""
  rules, ignored = subspace_net_rules(config)
  return convert_state_dict(state_dict, template, rules, ignored)
