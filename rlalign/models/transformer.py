"""A decoder-only transformer as pure functions of a params pytree.

One backbone serves every role (policy, reference, value model, reward model, verifier); roles
differ only in which heads their params carry. Layers are stacked along a leading "layers"
axis and run under ``lax.scan``, so compile time does not grow with depth.

Params layout (every leaf's logical axis names come from :func:`param_specs`)::

  embed            [vocab, embed]
  layers/attn_norm [layers, embed]
  layers/q         [layers, embed, q_heads, head_dim]
  layers/k, v      [layers, embed, kv_heads, head_dim]
  layers/o         [layers, q_heads, head_dim, embed]
  layers/mlp_norm  [layers, embed]
  layers/gate, up  [layers, embed, mlp]
  layers/down      [layers, mlp, embed]
  final_norm       [embed]
  lm_head          [embed, vocab]     (only with the "lm" head and untied embeddings)
  scalar_head/w    [embed], /b []     (only with the "scalar" head)
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp

from rlalign.parallel.logical import constrain

Params = Dict[str, Any]
HEADS = ("lm", "scalar")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shape and numerics of the backbone and which heads it carries."""
  vocab_size: int = 16
  d_model: int = 128
  n_layers: int = 2
  n_heads: int = 4
  n_kv_heads: int = 2
  head_dim: int = 32
  d_ff: int = 512
  rope_theta: float = 10_000.0
  norm_eps: float = 1e-6
  tie_embeddings: bool = True
  heads: Tuple[str, ...] = ("lm",)
  dtype: str = "float32"        # activations and matmuls
  param_dtype: str = "float32"  # stored params
  remat: bool = False           # rematerialise each layer in the backward pass

  def validate(self, prefix: str = "model") -> None:
    for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff"):
      if getattr(self, name) <= 0:
        raise ValueError(f"{prefix}.{name} must be positive, got {getattr(self, name)}")
    if self.n_heads % self.n_kv_heads:
      raise ValueError(f"{prefix}.n_heads ({self.n_heads}) must be a multiple of "
                       f"{prefix}.n_kv_heads ({self.n_kv_heads})")
    if self.head_dim % 2:
      raise ValueError(f"{prefix}.head_dim must be even for rotary embeddings, got {self.head_dim}")
    unknown = set(self.heads) - set(HEADS)
    if not self.heads or unknown:
      raise ValueError(f"{prefix}.heads must be a non-empty subset of {HEADS}, got {self.heads}")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in ("float32", "bfloat16"):
        raise ValueError(f"{prefix}.{name} must be 'float32' or 'bfloat16', "
                         f"got {getattr(self, name)!r}")


class ParamSpec(NamedTuple):
  shape: Tuple[int, ...]
  axes: Tuple[Optional[str], ...]
  init: str  # "normal" (std 1/sqrt(fan_in)), "ones" or "zeros"
  fan_in: int = 1


def param_specs(cfg: ModelConfig) -> Params:
  """The shape, logical axes and initialiser of every parameter."""
  L, d, H, K, hd, F, V = (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim,
                          cfg.d_ff, cfg.vocab_size)
  specs: Params = {
      "embed": ParamSpec((V, d), ("vocab", "embed"), "normal", d),
      "layers": {
          "attn_norm": ParamSpec((L, d), ("layers", "embed"), "ones"),
          "q": ParamSpec((L, d, H, hd), ("layers", "embed", "q_heads", "head_dim"), "normal", d),
          "k": ParamSpec((L, d, K, hd), ("layers", "embed", "kv_heads", "head_dim"), "normal", d),
          "v": ParamSpec((L, d, K, hd), ("layers", "embed", "kv_heads", "head_dim"), "normal", d),
          "o": ParamSpec((L, H, hd, d), ("layers", "q_heads", "head_dim", "embed"), "normal",
                         H * hd * 2 * L),
          "mlp_norm": ParamSpec((L, d), ("layers", "embed"), "ones"),
          "gate": ParamSpec((L, d, F), ("layers", "embed", "mlp"), "normal", d),
          "up": ParamSpec((L, d, F), ("layers", "embed", "mlp"), "normal", d),
          "down": ParamSpec((L, F, d), ("layers", "mlp", "embed"), "normal", F * 2 * L),
      },
      "final_norm": ParamSpec((d,), ("embed",), "ones"),
  }
  if "lm" in cfg.heads and not cfg.tie_embeddings:
    specs["lm_head"] = ParamSpec((d, V), ("embed", "vocab"), "normal", d)
  if "scalar" in cfg.heads:
    specs["scalar_head"] = {"w": ParamSpec((d,), ("embed",), "normal", d),
                            "b": ParamSpec((), (), "zeros")}
  return specs


def _is_spec(x) -> bool:
  return isinstance(x, ParamSpec)


def logical_axes(cfg: ModelConfig) -> Params:
  """A pytree like the params whose leaves are tuples of logical axis names."""
  return jax.tree.map(lambda s: s.axes, param_specs(cfg), is_leaf=_is_spec)


def abstract_params(cfg: ModelConfig) -> Params:
  dtype = jnp.dtype(cfg.param_dtype)
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, dtype), param_specs(cfg),
                      is_leaf=_is_spec)


def init(cfg: ModelConfig, rng: jax.Array) -> Params:
  """Random params. Output projections are scaled down with depth (GPT-2 style)."""
  specs = param_specs(cfg)
  leaves, treedef = jax.tree.flatten(specs, is_leaf=_is_spec)
  keys = jax.random.split(rng, len(leaves))
  dtype = jnp.dtype(cfg.param_dtype)

  def make(spec: ParamSpec, key):
    if spec.init == "ones":
      return jnp.ones(spec.shape, dtype)
    if spec.init == "zeros":
      return jnp.zeros(spec.shape, dtype)
    std = 1.0 / math.sqrt(spec.fan_in)
    return (std * jax.random.normal(key, spec.shape, jnp.float32)).astype(dtype)

  return jax.tree.unflatten(treedef, [make(s, k) for s, k in zip(leaves, keys)])


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
  x32 = x.astype(jnp.float32)
  normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return (normed * weight.astype(jnp.float32)).astype(x.dtype)


def rotary(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
  """Rotary embedding on [B, T, heads, head_dim], halves rotated (the Llama/HF layout)."""
  half = x.shape[-1] // 2
  inv_freq = 1.0 / (theta ** (jnp.arange(half, dtype=jnp.float32) / half))
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, half]
  cos = jnp.cos(angles)[:, :, None, :]
  sin = jnp.sin(angles)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


class KVCache(NamedTuple):
  """Keys and values of every layer: [layers, batch, slots, kv_heads, head_dim]."""
  k: jax.Array
  v: jax.Array


CACHE_AXES = ("layers", "batch", "cache_length", "kv_heads", "head_dim")


def init_cache(cfg: ModelConfig, batch: int, slots: int) -> KVCache:
  shape = (cfg.n_layers, batch, slots, cfg.n_kv_heads, cfg.head_dim)
  zeros = jnp.zeros(shape, jnp.dtype(cfg.dtype))
  return KVCache(constrain(zeros, CACHE_AXES), constrain(zeros, CACHE_AXES))


def _attention(q, k, v, mask, cfg: ModelConfig):
  """Grouped-query attention. q [B,T,H,hd], k/v [B,S,K,hd], mask [B,T,S] -> [B,T,H,hd]."""
  B, T, H, hd = q.shape
  K = k.shape[2]
  q = q.reshape(B, T, K, H // K, hd)
  scores = jnp.einsum("btkgd,bskd->bkgts", q, k).astype(jnp.float32) / math.sqrt(hd)
  scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
  return out.reshape(B, T, H, hd)


def forward(params: Params, tokens: jax.Array, positions: jax.Array, key_mask: jax.Array,
            cfg: ModelConfig, *, cache: Optional[KVCache] = None,
            cache_index: jax.Array | int = 0) -> Tuple[jax.Array, Optional[KVCache]]:
  """Runs the backbone.

  Args:
    tokens: [B, T] token ids.
    positions: [B, T] rotary positions (left padding makes them differ per row).
    key_mask: [B, S] which keys may be attended to: S = T without a cache, else the cache's
      slot count. Causality is by slot order.
    cache: if given, this call's keys/values are written at ``cache_index`` and attention runs
      over every slot of the cache.

  Returns:
    Final-normed hidden states [B, T, d] and the updated cache (None without one).
  """
  dtype = jnp.dtype(cfg.dtype)
  T = tokens.shape[1]
  x = params["embed"].astype(dtype)[tokens]
  x = constrain(x, ("batch", "length", "embed"))
  q_slots = cache_index + jnp.arange(T)
  k_slots = jnp.arange(key_mask.shape[1])
  mask = (k_slots[None, :] <= q_slots[:, None])[None] & key_mask[:, None, :]

  def layer(x, scanned):
    p, layer_cache = scanned
    p = jax.tree.map(lambda w: w.astype(dtype), p)
    h = rms_norm(x, p["attn_norm"], cfg.norm_eps)
    q = rotary(jnp.einsum("btd,dhk->bthk", h, p["q"]), positions, cfg.rope_theta)
    k = rotary(jnp.einsum("btd,dhk->bthk", h, p["k"]), positions, cfg.rope_theta)
    v = jnp.einsum("btd,dhk->bthk", h, p["v"])
    q = constrain(q, ("batch", "length", "q_heads", "head_dim"))
    if layer_cache is not None:
      ck, cv = layer_cache
      k = jax.lax.dynamic_update_slice_in_dim(ck, k.astype(ck.dtype), cache_index, axis=1)
      v = jax.lax.dynamic_update_slice_in_dim(cv, v.astype(cv.dtype), cache_index, axis=1)
      layer_cache = (k, v)
    attn = _attention(q, k, v, mask, cfg)
    x = x + jnp.einsum("bthk,hkd->btd", attn, p["o"])
    h = rms_norm(x, p["mlp_norm"], cfg.norm_eps)
    gated = jax.nn.silu(jnp.einsum("btd,df->btf", h, p["gate"]))
    gated = constrain(gated * jnp.einsum("btd,df->btf", h, p["up"]), ("batch", "length", "mlp"))
    x = x + jnp.einsum("btf,fd->btd", gated, p["down"])
    return constrain(x, ("batch", "length", "embed")), layer_cache

  if cfg.remat:
    layer = jax.checkpoint(layer)
  layer_caches = None if cache is None else (cache.k, cache.v)
  x, new_caches = jax.lax.scan(layer, x, (params["layers"], layer_caches))
  x = rms_norm(x, params["final_norm"].astype(dtype), cfg.norm_eps)
  new_cache = None if cache is None else KVCache(*new_caches)
  return x, new_cache


def lm_logits(params: Params, hidden: jax.Array, cfg: ModelConfig) -> jax.Array:
  """Vocabulary logits in float32, [..., vocab]."""
  if cfg.tie_embeddings:
    w = params["embed"].astype(hidden.dtype).T
  else:
    w = params["lm_head"].astype(hidden.dtype)
  return jnp.einsum("...d,dv->...v", hidden, w).astype(jnp.float32)


def scalar_output(params: Params, hidden: jax.Array) -> jax.Array:
  """The scalar head (value or reward), [...]."""
  head = params["scalar_head"]
  return (jnp.einsum("...d,d->...", hidden.astype(jnp.float32), head["w"].astype(jnp.float32))
          + head["b"].astype(jnp.float32))


def positions_from_mask(mask: jax.Array) -> jax.Array:
  """Rotary positions for left-padded rows: 0 at the first real token."""
  return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


def token_logprobs(params: Params, tokens: jax.Array, mask: jax.Array, cfg: ModelConfig,
                   *, with_entropy: bool = False):
  """Log-probabilities of ``tokens[:, 1:]`` given their prefixes, [B, T-1].

  With ``with_entropy`` also returns the entropy of each predictive distribution.
  """
  hidden, _ = forward(params, tokens, positions_from_mask(mask), mask, cfg)
  logits = lm_logits(params, hidden[:, :-1], cfg)
  logp_all = jax.nn.log_softmax(logits, axis=-1)
  logp = jnp.take_along_axis(logp_all, tokens[:, 1:, None], axis=-1)[..., 0]
  if not with_entropy:
    return logp
  entropy = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
  return logp, entropy


def count_params(params: Params) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(params))
