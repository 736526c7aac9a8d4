"""LoRA adapters for any linear weight of a params pytree, chosen by a regex over its path.

A weight W is adapted as ``W + (alpha / rank) * A @ B`` with A: in -> rank and B: rank -> out.
Adapters are a separate pytree, so training them is ``jax.grad`` with respect to that tree
of a loss through :func:`merge`; the base params are constants (no optimizer state, no
gradients)::

  lora = init_lora(params, cfg, rng, transformer.logical_axes(model_cfg))
  loss = lambda lora: objective(transformer.forward(merge(params, lora, cfg), ...))
  grads = jax.grad(loss)(lora)

Paths join dict keys with "/" (``layers/q``, ``layers/down``, ``lm_head``, ``embed``) and
`target_regex` must match a whole path (``re.fullmatch``).

Which axes are "in" and which are "out" follows from the logical axis names, with one rule:
leading ``layers`` axes index independent adapters (one per stacked layer); of the remaining
axes, if the first is ``embed`` it is the input and the rest are the output (q, k, v: embed ->
(heads, head_dim); gate, up: embed -> mlp; lm_head: embed -> vocab), otherwise the last must
be ``embed`` and is the output, the rest the input (o: (q_heads, head_dim) -> embed; down:
mlp -> embed; the embedding table: vocab -> embed, a one-hot lookup, which with tied
embeddings adapts the LM head too). A weight whose only other axis is ``embed`` (a norm
scale, an output bias, the scalar head) or that has no ``embed`` axis at either end (q/k/v
biases, q/k norms) is not a linear map of the residual stream, and selecting it raises.

Adapter trees mirror the adapted paths with leaves ``{"a", "b"}``::

  a [layers.., *in, rank]  axes (layers.., *in_axes, "lora_rank")   ~ N(0, 1/fan_in)
  b [layers.., rank, *out] axes (layers.., "lora_rank", *out_axes)  zeros

so a fresh adapter leaves the model unchanged, and in/out axes keep their logical names
(and therefore their sharding). Adapters are stored in `cfg.dtype`; merging adds the update
in float32 and casts back to each weight's own dtype, so `merge` returns a plain params tree
of the original structure and dtypes (what an exporter expects). With bfloat16 weights,
`unmerge(merge(p))` is only as exact as bfloat16.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp

Params = Dict[str, Any]
LORA_RANK_AXIS = "lora_rank"
_LAYER_AXIS = "layers"
_EMBED_AXIS = "embed"


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
  """Rank, scale (alpha / rank) and targets of the adapters."""
  rank: int = 8
  alpha: float = 16.0
  target_regex: str = r"layers/(q|k|v|o|gate|up|down)"
  dtype: str = "float32"  # adapters; merged weights keep their own dtype

  def validate(self, prefix: str = "lora") -> None:
    if self.rank <= 0:
      raise ValueError(f"{prefix}.rank must be positive, got {self.rank}")
    if not self.alpha > 0:
      raise ValueError(f"{prefix}.alpha must be positive, got {self.alpha}")
    if self.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"{prefix}.dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")
    try:
      re.compile(self.target_regex)
    except re.error as e:
      raise ValueError(f"{prefix}.target_regex {self.target_regex!r} is not a valid regex: {e}"
                       ) from None

  @property
  def scale(self) -> float:
    return self.alpha / self.rank


Axes = Tuple[Optional[str], ...]


def _path(keypath) -> str:
  return jax.tree_util.keystr(keypath, simple=True, separator="/")


def flatten_paths(tree, is_leaf=None) -> Dict[str, Any]:
  """{"layers/q": leaf, ...}: every leaf of a nested-dict tree by its "/"-joined path."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
  return {_path(kp): leaf for kp, leaf in leaves}


def _is_axes(x) -> bool:
  return isinstance(x, tuple) and all(isinstance(a, (str, type(None))) for a in x)


def _nest(flat: Dict[str, Any]) -> Params:
  """{"layers/q/a": x} -> {"layers": {"q": {"a": x}}}."""
  tree: Params = {}
  for path, leaf in flat.items():
    *parents, name = path.split("/")
    node = tree
    for key in parents:
      node = node.setdefault(key, {})
    node[name] = leaf
  return tree


def split_axes(path: str, axes: Sequence[Optional[str]]) -> Tuple[int, int, int]:
  """(layer, input, output) axis counts of a weight; see the module docstring for the rule."""
  axes = tuple(axes)
  n_layers = 0
  while n_layers < len(axes) and axes[n_layers] == _LAYER_AXIS:
    n_layers += 1
  rest = axes[n_layers:]
  if len(rest) >= 2 and rest[0] == _EMBED_AXIS:
    return n_layers, 1, len(rest) - 1
  if len(rest) >= 2 and rest[-1] == _EMBED_AXIS:
    return n_layers, len(rest) - 1, 1
  raise ValueError(
      f"LoRA target {path!r} with logical axes {axes} is not a linear map to or from 'embed' "
      "(norm scales, biases and scalar heads cannot be adapted); narrow lora.target_regex")


def _targets(param_axes: Params, cfg: LoRAConfig) -> Dict[str, Axes]:
  """Path -> logical axes of every weight `cfg.target_regex` selects, validated."""
  cfg.validate()
  pattern = re.compile(cfg.target_regex)
  all_axes = flatten_paths(param_axes, is_leaf=_is_axes)
  chosen = {p: tuple(a) for p, a in all_axes.items() if pattern.fullmatch(p)}
  if not chosen:
    raise ValueError(f"lora.target_regex {cfg.target_regex!r} matches no parameter; "
                     f"paths are {sorted(all_axes)}")
  for path, axes in chosen.items():
    split_axes(path, axes)
  return chosen


def lora_logical_axes(param_axes: Params, cfg: LoRAConfig) -> Params:
  """Logical axis names of the adapter tree that `init_lora` builds for these params."""
  out = {}
  for path, axes in _targets(param_axes, cfg).items():
    n_layers, n_in, _ = split_axes(path, axes)
    layer_axes, in_axes, out_axes = (axes[:n_layers], axes[n_layers:n_layers + n_in],
                                     axes[n_layers + n_in:])
    out[f"{path}/a"] = layer_axes + in_axes + (LORA_RANK_AXIS,)
    out[f"{path}/b"] = layer_axes + (LORA_RANK_AXIS,) + out_axes
  return _nest(out)


def init_lora(params: Params, cfg: LoRAConfig, rng: jax.Array, param_axes: Params) -> Params:
  """Fresh adapters for every weight `cfg.target_regex` selects: A random, B zero."""
  weights = flatten_paths(params)
  targets = _targets(param_axes, cfg)
  dtype = jnp.dtype(cfg.dtype)
  out = {}
  for i, (path, axes) in enumerate(sorted(targets.items())):
    if path not in weights:
      raise ValueError(f"LoRA target {path!r} is in the logical axes but not in the params")
    shape = weights[path].shape
    if len(shape) != len(axes):
      raise ValueError(f"LoRA target {path!r} has shape {shape} but logical axes {axes}")
    n_layers, n_in, _ = split_axes(path, axes)
    lead, ins, outs = shape[:n_layers], shape[n_layers:n_layers + n_in], shape[n_layers + n_in:]
    # A's output then has about unit scale per rank, like the base weight's per output.
    std = 1.0 / math.sqrt(math.prod(ins))
    a = std * jax.random.normal(jax.random.fold_in(rng, i), lead + ins + (cfg.rank,),
                                jnp.float32)
    out[f"{path}/a"] = a.astype(dtype)
    out[f"{path}/b"] = jnp.zeros(lead + (cfg.rank,) + outs, dtype)
  return _nest(out)


def delta(weight_shape: Tuple[int, ...], a: jax.Array, b: jax.Array) -> jax.Array:
  """A @ B in float32, shaped like the weight (the layer/in/out counts follow from shapes)."""
  n_layers = a.ndim + b.ndim - 2 - len(weight_shape)
  lead = weight_shape[:n_layers]
  rank = a.shape[-1]
  a2 = a.astype(jnp.float32).reshape(lead + (-1, rank))
  b2 = b.astype(jnp.float32).reshape(lead + (rank, -1))
  return jnp.matmul(a2, b2).reshape(weight_shape)


def _apply(params: Params, lora: Params, cfg: LoRAConfig, sign: float) -> Params:
  adapters = flatten_paths(lora)
  paths = {p.rsplit("/", 1)[0] for p in adapters}
  weights = flatten_paths(params)
  missing = sorted(paths - set(weights))
  if missing:
    raise ValueError(f"LoRA adapters for {missing} have no matching params")

  def update(keypath, w):
    path = _path(keypath)
    if path not in paths:
      return w
    d = delta(w.shape, adapters[f"{path}/a"], adapters[f"{path}/b"])
    return (w.astype(jnp.float32) + sign * cfg.scale * d).astype(w.dtype)

  return jax.tree_util.tree_map_with_path(update, params)


def merge(params: Params, lora: Params, cfg: LoRAConfig) -> Params:
  """Params with every adapted weight replaced by W + (alpha / rank) A @ B."""
  return _apply(params, lora, cfg, +1.0)


def unmerge(merged: Params, lora: Params, cfg: LoRAConfig) -> Params:
  """Inverse of :func:`merge`: subtracts the same update."""
  return _apply(merged, lora, cfg, -1.0)
