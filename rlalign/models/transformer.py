"""A decoder-only transformer as pure functions of a params pytree.

One backbone serves every role (policy, reference, value model, reward model, verifier); roles
differ only in which heads their params carry. Layers are stacked along a leading "layers"
axis and run under ``lax.scan``, so compile time does not grow with depth. The sampler's
decode loop is the exception: it runs :func:`unstack_layers` params, one unrolled layer at a
time, because slicing a layer out of the stack per token costs as much as its matmuls.

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
                   [embed, scalar_heads], /b [scalar_heads]   (scalar_heads K > 1)

Optional per-layer params, present only when the config asks for them (the Hugging Face
families in ``rlalign.models.hf`` need them)::

  layers/q_bias    [layers, q_heads, head_dim]    qkv_bias (Qwen2)
  layers/k_bias, v_bias [layers, kv_heads, head_dim]
  layers/o_bias    [layers, embed]                o_bias
  layers/q_norm, k_norm [layers, head_dim]        qk_norm (Qwen3, Gemma3)
  layers/post_attn_norm, post_mlp_norm [layers, embed]   sandwich_norms (Gemma2/3)

Per-layer attention data that is not a param (rotary frequencies, sliding windows) comes
from the config as numpy constants and is scanned beside the layer params.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from rlalign.parallel.logical import constrain

Params = Dict[str, Any]
HEADS = ("lm", "scalar")
ACTIVATIONS = ("silu", "gelu_tanh", "gelu")
ROPE_SCALINGS = ("none", "linear", "llama3")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """Rotary frequency scaling: "none", "linear" (divide by ``factor``) or "llama3" (Llama 3.1)."""
  kind: str = "none"
  factor: float = 1.0
  low_freq_factor: float = 1.0    # llama3 only
  high_freq_factor: float = 4.0   # llama3 only
  original_max_position_embeddings: int = 8192  # llama3 only

  def validate(self, prefix: str = "model.rope_scaling") -> None:
    if self.kind not in ROPE_SCALINGS:
      raise ValueError(f"{prefix}.kind must be one of {ROPE_SCALINGS}, got {self.kind!r}")
    if self.factor <= 0:
      raise ValueError(f"{prefix}.factor must be positive, got {self.factor}")
    if self.kind == "llama3" and not (0 < self.low_freq_factor < self.high_freq_factor):
      raise ValueError(f"{prefix}: llama3 needs 0 < low_freq_factor < high_freq_factor, got "
                       f"{self.low_freq_factor} and {self.high_freq_factor}")


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
  # Outputs of the "scalar" head: 1 is a value or reward head ([...] outputs); K > 1 are K
  # independent heads on one backbone ([..., K]), an ensemble at the cost of one model.
  scalar_heads: int = 1
  dtype: str = "float32"        # activations and matmuls
  param_dtype: str = "float32"  # stored params
  remat: bool = False           # rematerialise each layer in the backward pass
  # Architecture variants of the Hugging Face families; the defaults are the Llama backbone.
  qkv_bias: bool = False        # biases on q, k, v (Qwen2)
  o_bias: bool = False          # bias on the attention output projection
  qk_norm: bool = False         # RMSNorm over head_dim on q and k, before rotary (Qwen3, Gemma3)
  norm_plus_one: bool = False   # RMSNorms scale by (1 + w), w starting at 0 (Gemma)
  embed_scale: bool = False     # embeddings times sqrt(d_model) in the compute dtype (Gemma)
  mlp_activation: str = "silu"  # of the gated MLP: "silu", "gelu_tanh" (GeGLU) or "gelu"
  sandwich_norms: bool = False  # also norm the attention and MLP outputs (Gemma2/3)
  attn_softcap: float = 0.0     # cap * tanh(scores / cap) on attention logits; 0 disables
  final_softcap: float = 0.0    # the same on vocabulary logits; 0 disables
  query_pre_attn_scalar: float = 0.0  # scores scaled by its -1/2 power; 0 means head_dim
  attn_windows: Tuple[int, ...] = ()  # per layer: keys within this many slots (0: all); ()=all
  rope_scaling: RopeScaling = RopeScaling()
  rope_local_theta: float = 0.0  # unscaled rotary base of sliding-window layers (Gemma3); 0: same

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
    if self.scalar_heads < 1:
      raise ValueError(f"{prefix}.scalar_heads must be >= 1, got {self.scalar_heads}")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in ("float32", "bfloat16"):
        raise ValueError(f"{prefix}.{name} must be 'float32' or 'bfloat16', "
                         f"got {getattr(self, name)!r}")
    if self.mlp_activation not in ACTIVATIONS:
      raise ValueError(f"{prefix}.mlp_activation must be one of {ACTIVATIONS}, "
                       f"got {self.mlp_activation!r}")
    for name in ("attn_softcap", "final_softcap", "query_pre_attn_scalar", "rope_local_theta"):
      if getattr(self, name) < 0:
        raise ValueError(f"{prefix}.{name} must be >= 0 (0 disables), got {getattr(self, name)}")
    if self.rope_theta <= 0:
      raise ValueError(f"{prefix}.rope_theta must be positive, got {self.rope_theta}")
    if self.attn_windows and len(self.attn_windows) != self.n_layers:
      raise ValueError(f"{prefix}.attn_windows needs one entry per layer ({self.n_layers}), "
                       f"got {len(self.attn_windows)}")
    if any(w < 0 for w in self.attn_windows):
      raise ValueError(f"{prefix}.attn_windows must be >= 0 (0: full attention), "
                       f"got {self.attn_windows}")
    self.rope_scaling.validate(f"{prefix}.rope_scaling")


class ParamSpec(NamedTuple):
  shape: Tuple[int, ...]
  axes: Tuple[Optional[str], ...]
  init: str  # "normal" (std 1/sqrt(fan_in)), "ones" or "zeros"
  fan_in: int = 1


def param_specs(cfg: ModelConfig) -> Params:
  """The shape, logical axes and initialiser of every parameter."""
  L, d, H, K, hd, F, V = (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim,
                          cfg.d_ff, cfg.vocab_size)
  unit = "zeros" if cfg.norm_plus_one else "ones"  # norm weights that start as the identity
  specs: Params = {
      "embed": ParamSpec((V, d), ("vocab", "embed"), "normal", d),
      "layers": {
          "attn_norm": ParamSpec((L, d), ("layers", "embed"), unit),
          "q": ParamSpec((L, d, H, hd), ("layers", "embed", "q_heads", "head_dim"), "normal", d),
          "k": ParamSpec((L, d, K, hd), ("layers", "embed", "kv_heads", "head_dim"), "normal", d),
          "v": ParamSpec((L, d, K, hd), ("layers", "embed", "kv_heads", "head_dim"), "normal", d),
          "o": ParamSpec((L, H, hd, d), ("layers", "q_heads", "head_dim", "embed"), "normal",
                         H * hd * 2 * L),
          "mlp_norm": ParamSpec((L, d), ("layers", "embed"), unit),
          "gate": ParamSpec((L, d, F), ("layers", "embed", "mlp"), "normal", d),
          "up": ParamSpec((L, d, F), ("layers", "embed", "mlp"), "normal", d),
          "down": ParamSpec((L, F, d), ("layers", "mlp", "embed"), "normal", F * 2 * L),
      },
      "final_norm": ParamSpec((d,), ("embed",), unit),
  }
  layers = specs["layers"]
  if cfg.qkv_bias:
    layers["q_bias"] = ParamSpec((L, H, hd), ("layers", "q_heads", "head_dim"), "zeros")
    layers["k_bias"] = ParamSpec((L, K, hd), ("layers", "kv_heads", "head_dim"), "zeros")
    layers["v_bias"] = ParamSpec((L, K, hd), ("layers", "kv_heads", "head_dim"), "zeros")
  if cfg.o_bias:
    layers["o_bias"] = ParamSpec((L, d), ("layers", "embed"), "zeros")
  if cfg.qk_norm:
    layers["q_norm"] = ParamSpec((L, hd), ("layers", "head_dim"), unit)
    layers["k_norm"] = ParamSpec((L, hd), ("layers", "head_dim"), unit)
  if cfg.sandwich_norms:
    layers["post_attn_norm"] = ParamSpec((L, d), ("layers", "embed"), unit)
    layers["post_mlp_norm"] = ParamSpec((L, d), ("layers", "embed"), unit)
  if "lm" in cfg.heads and not cfg.tie_embeddings:
    specs["lm_head"] = ParamSpec((d, V), ("embed", "vocab"), "normal", d)
  if "scalar" in cfg.heads and cfg.scalar_heads == 1:
    specs["scalar_head"] = {"w": ParamSpec((d,), ("embed",), "normal", d),
                            "b": ParamSpec((), (), "zeros")}
  elif "scalar" in cfg.heads:
    K = cfg.scalar_heads
    specs["scalar_head"] = {"w": ParamSpec((d, K), ("embed", "scalar_heads"), "normal", d),
                            "b": ParamSpec((K,), ("scalar_heads",), "zeros")}
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


def rms_norm(x: jax.Array, weight: jax.Array, eps: float, plus_one: bool = False) -> jax.Array:
  """RMSNorm over the last axis in float32; scales by ``1 + weight`` with ``plus_one`` (Gemma)."""
  x32 = x.astype(jnp.float32)
  normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  w = weight.astype(jnp.float32)
  return (normed * (1.0 + w if plus_one else w)).astype(x.dtype)


def rope_inv_freq(head_dim: int, theta: float, scaling: RopeScaling = RopeScaling()) -> np.ndarray:
  """Rotary inverse frequencies [head_dim / 2] in float32, computed once from the config."""
  # The exponent in float32 as HF builds it, the power in float64 and rounded once.
  exponent = np.arange(0, head_dim, 2).astype(np.float32) / np.float32(head_dim)
  inv_freq = 1.0 / (float(theta) ** exponent.astype(np.float64))
  if scaling.kind == "linear":
    inv_freq = inv_freq / scaling.factor
  elif scaling.kind == "llama3":
    # Long wavelengths are divided by ``factor``, short ones kept, the band between blended.
    old_len = scaling.original_max_position_embeddings
    low_wavelen = old_len / scaling.low_freq_factor
    high_wavelen = old_len / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = ((old_len / wavelen - scaling.low_freq_factor)
              / (scaling.high_freq_factor - scaling.low_freq_factor))
    blended = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    inv_freq = np.where(medium, blended, scaled)
  return inv_freq.astype(np.float32)


def layer_constants(cfg: ModelConfig) -> Dict[str, np.ndarray]:
  """Per-layer attention data scanned beside the params: rotary frequencies [L, head_dim/2]
  and sliding windows [L] (0: full attention)."""
  windows = np.asarray(cfg.attn_windows or (0,) * cfg.n_layers, np.int32)
  full = rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
  inv_freq = np.stack([full] * cfg.n_layers)
  if cfg.rope_local_theta:
    inv_freq[windows > 0] = rope_inv_freq(cfg.head_dim, cfg.rope_local_theta)
  return {"inv_freq": inv_freq, "window": windows}


def rotary(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
  """Rotary embedding on [B, T, heads, head_dim], halves rotated (the Llama/HF layout)."""
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, half]
  cos = jnp.cos(angles)[:, :, None, :]
  sin = jnp.sin(angles)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


def _softcap(x: jax.Array, cap: float) -> jax.Array:
  return jnp.tanh(x / cap) * cap if cap else x


def _activation(x: jax.Array, name: str) -> jax.Array:
  if name == "silu":
    return jax.nn.silu(x)
  return jax.nn.gelu(x, approximate=name == "gelu_tanh")


class KVCache(NamedTuple):
  """Keys and values of every layer: [layers, batch, kv_heads, slots, head_dim].

  Heads come before slots so each layer's block is already in the layout the attention
  contractions read (batch and head leading, slots and head_dim trailing): decoding reads the
  cache in place instead of transposing a copy of it every step.
  """
  k: jax.Array
  v: jax.Array


CACHE_AXES = ("layers", "batch", "kv_heads", "cache_length", "head_dim")


def init_cache(cfg: ModelConfig, batch: int, slots: int) -> KVCache:
  shape = (cfg.n_layers, batch, cfg.n_kv_heads, slots, cfg.head_dim)
  zeros = jnp.zeros(shape, jnp.dtype(cfg.dtype))
  return KVCache(constrain(zeros, CACHE_AXES), constrain(zeros, CACHE_AXES))


def unstack_cache(cache: KVCache) -> KVCache:
  """A stacked cache as tuples of per-layer arrays, for :func:`unstack_layers` params."""
  return KVCache(tuple(cache.k), tuple(cache.v))


def unstack_layers(params: Params, *, fuse: bool = True) -> Params:
  """The params with ``layers`` split into a tuple of per-layer dicts.

  :func:`forward` then runs the layers as an unrolled loop. Decoding does this once before its
  loop: inside a scan, every step would slice (copy) each layer's weights and cache out of the
  stacked arrays, which costs as much as the matmuls themselves at small batch. With
  ``fuse``, q/k/v and gate/up are also concatenated, so each becomes one wider matmul.
  """
  layers = dict(params["layers"])
  if fuse:
    layers["qkv"] = jnp.concatenate([layers.pop(n) for n in ("q", "k", "v")], axis=2)
    layers["gate_up"] = jnp.concatenate([layers.pop(n) for n in ("gate", "up")], axis=2)
  n = jax.tree.leaves(layers)[0].shape[0]
  return {**params, "layers": tuple(jax.tree.map(lambda w, i=i: w[i], layers) for i in range(n))}


def _attention(q, k, v, mask, cfg: ModelConfig):
  """Grouped-query attention. q [B,T,H,hd], k/v [B,K,S,hd], mask [B,T,S] -> [B,T,H,hd]."""
  B, T, H, hd = q.shape
  K = k.shape[1]
  scale = 1.0 / math.sqrt(cfg.query_pre_attn_scalar or hd)
  # Scaling q, not the scores, touches B*T*H*hd numbers instead of B*H*T*S.
  q = (q * jnp.asarray(scale, q.dtype)).reshape(B, T, K, H // K, hd)
  return _grouped_attention(q, k, v, mask, float(cfg.attn_softcap)).reshape(B, T, H, hd)


def _scores(q, k, mask, cap: float):
  """Masked attention logits in float32, [B, K, G, T, S], and the capped ones before masking."""
  s = jnp.einsum("btkgd,bksd->bkgts", q, k).astype(jnp.float32)
  s = _softcap(s, cap)
  return jnp.where(mask[:, None, None, :, :], s, jnp.finfo(jnp.float32).min), s


def _grouped_attention_fwd(q, k, v, mask, cap):
  s, _ = _scores(q, k, mask, cap)
  m = jnp.max(s, axis=-1, keepdims=True)
  e = jnp.exp(s - m)
  l = jnp.sum(e, axis=-1, keepdims=True)
  probs = (e / l).astype(v.dtype)
  out = jnp.einsum("bkgts,bksd->btkgd", probs, v)
  return out, (q, k, v, mask, out, m, l)


def _grouped_attention_bwd(cap, residuals, d_out):
  """FlashAttention's backward: the probabilities are recomputed from q, k and the saved row
  max and sum instead of being stored, and the softmax's row term is sum(dO * O) over head_dim
  rather than sum(dP * P) over every key, so no [T, S] tensor beyond the probabilities and
  their gradient is ever made or kept."""
  q, k, v, mask, out, m, l = residuals
  s, capped = _scores(q, k, mask, cap)
  probs = jnp.exp(s - m) / l
  d_out32 = d_out.astype(jnp.float32)
  # dV and dK contract over queries; written as (dO^T P)^T, the [T, S] operand is read in
  # its own layout and only [hd, S] results are transposed.
  dv = jnp.einsum("btkgd,bkgts->bkds", d_out.astype(v.dtype),
                  probs.astype(v.dtype)).swapaxes(-1, -2)
  dp = jnp.einsum("btkgd,bksd->bkgts", d_out.astype(v.dtype), v).astype(jnp.float32)
  row = jnp.einsum("btkgd,btkgd->bkgt", d_out32, out.astype(jnp.float32))[..., None]
  # Masked keys get no gradient, also in a row with every key masked (a pad query).
  ds = jnp.where(mask[:, None, None, :, :], probs * (dp - row), 0.0)
  if cap:
    ds = ds * (1.0 - jnp.square(capped / cap))
  ds = ds.astype(q.dtype)
  dq = jnp.einsum("bkgts,bksd->btkgd", ds, k)
  dk = jnp.einsum("btkgd,bkgts->bkds", q, ds).swapaxes(-1, -2)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _grouped_attention(q, k, v, mask, cap):
  """softmax(q k^T) v over [B, T, K, G, hd] queries (pre-scaled) and [B, K, S, hd] keys."""
  return _grouped_attention_fwd(q, k, v, mask, cap)[0]


_grouped_attention.defvjp(_grouped_attention_fwd, _grouped_attention_bwd)


def _dense(x: jax.Array, w: jax.Array, in_dims: int = 1) -> jax.Array:
  """Contracts the last ``in_dims`` axes of ``x`` with the first of ``w``, as one 2D matmul.

  Folding batch and length into one row axis first matters for the backward pass: the
  weight gradient is then a plain [rows, in]^T x [rows, out] product, where the 3D einsum
  leaves XLA's CPU backend materialising transposed copies of the activations (1.6x slower
  on the MLP of a 4-layer d256 model).
  """
  lead, contract, out = x.shape[:-in_dims], w.shape[:in_dims], w.shape[in_dims:]
  rows = x.reshape(-1, math.prod(contract))
  y = rows @ w.reshape(math.prod(contract), -1)
  return y.reshape(*lead, *out)


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
      over every slot of the cache. Stacked params take a stacked cache; params from
      :func:`unstack_layers` take per-layer cache arrays (:func:`unstack_cache`).

  Returns:
    Final-normed hidden states [B, T, d] and the updated cache (None without one).
  """
  dtype = jnp.dtype(cfg.dtype)
  T = tokens.shape[1]
  norm = lambda x, w: rms_norm(x, w, cfg.norm_eps, cfg.norm_plus_one)
  # Look rows up in a gathered (replicated) table, as FSDP gathers any weight before use: a
  # lookup into a split table makes the partitioner replicate it anyway, with a warning.
  x = constrain(jnp.asarray(params["embed"], dtype), (None, None))[tokens]
  if cfg.embed_scale:
    # HF multiplies by the normalizer cast to the compute dtype (sqrt(3072) is 55.5 in bf16).
    x = x * jnp.asarray(math.sqrt(cfg.d_model), dtype)
  x = constrain(x, ("batch", "length", "embed"))
  q_slots = cache_index + jnp.arange(T)
  k_slots = jnp.arange(key_mask.shape[1])
  mask = (k_slots[None, :] <= q_slots[:, None])[None] & key_mask[:, None, :]
  distance = q_slots[:, None] - k_slots[None, :]  # [T, S], in slots, as HF's sliding window
  consts = layer_constants(cfg)
  windowed = bool(consts["window"].any())

  def layer(carry, scanned):
    x, caches = carry
    p, c, index = scanned  # index None: ``caches`` are this layer's own arrays
    p = jax.tree.map(lambda w: w.astype(dtype), p)
    h = norm(x, p["attn_norm"])
    if "qkv" in p:  # fused by unstack_layers: one [d, (H + 2K) hd] matmul
      q, k, v = jnp.split(_dense(h, p["qkv"]), [cfg.n_heads, cfg.n_heads + cfg.n_kv_heads],
                          axis=2)
    else:
      q, k, v = _dense(h, p["q"]), _dense(h, p["k"]), _dense(h, p["v"])
    if cfg.qkv_bias:
      q, k, v = q + p["q_bias"], k + p["k_bias"], v + p["v_bias"]
    if cfg.qk_norm:
      q, k = norm(q, p["q_norm"]), norm(k, p["k_norm"])
    q = rotary(q, positions, c["inv_freq"])
    k = rotary(k, positions, c["inv_freq"])
    q = constrain(q, ("batch", "length", "q_heads", "head_dim"))
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, K, T, hd]
    if caches is not None and index is None:
      caches = tuple(jax.lax.dynamic_update_slice(full, new.astype(full.dtype),
                                                  (0, 0, cache_index, 0))
                     for full, new in zip(caches, (k, v)))
      k, v = caches
    elif caches is not None:
      # The whole stacked cache rides in the scan carry and only this call's slots are
      # written, so XLA updates it in place.
      start = (index, 0, 0, cache_index, 0)
      caches = tuple(jax.lax.dynamic_update_slice(full, new[None].astype(full.dtype), start)
                     for full, new in zip(caches, (k, v)))
      k, v = (jax.lax.dynamic_index_in_dim(full, index, keepdims=False) for full in caches)
    layer_mask = mask
    if windowed:  # window 0 means full attention on this layer
      layer_mask = mask & ((c["window"] == 0) | (distance < c["window"]))[None]
    attn = _attention(q, k, v, layer_mask, cfg)
    attn_out = _dense(attn, p["o"], in_dims=2)
    if cfg.o_bias:
      attn_out = attn_out + p["o_bias"]
    if cfg.sandwich_norms:
      attn_out = norm(attn_out, p["post_attn_norm"])
    x = x + attn_out
    h = norm(x, p["mlp_norm"])
    if "gate_up" in p:
      gate, up = jnp.split(_dense(h, p["gate_up"]), 2, axis=-1)
    else:
      gate, up = _dense(h, p["gate"]), _dense(h, p["up"])
    gated = constrain(_activation(gate, cfg.mlp_activation) * up, ("batch", "length", "mlp"))
    mlp_out = _dense(gated, p["down"])
    if cfg.sandwich_norms:
      mlp_out = norm(mlp_out, p["post_mlp_norm"])
    x = x + mlp_out
    return (constrain(x, ("batch", "length", "embed")), caches), None

  if cfg.remat:
    layer = jax.checkpoint(layer)
  if isinstance(params["layers"], (tuple, list)):
    # Unstacked layers (see :func:`unstack_layers`): a Python loop with each layer's own
    # weights and cache arrays, so nothing is sliced out of a stacked array per call.
    new_k, new_v = [], []
    for i, p in enumerate(params["layers"]):
      c = {name: value[i] for name, value in consts.items()}
      caches = None if cache is None else (cache.k[i], cache.v[i])
      (x, caches), _ = layer((x, caches), (p, c, None))
      if caches is not None:
        new_k.append(caches[0])
        new_v.append(caches[1])
    new_cache = None if cache is None else KVCache(tuple(new_k), tuple(new_v))
  else:
    caches = None if cache is None else (cache.k, cache.v)
    xs = (params["layers"], consts, jnp.arange(cfg.n_layers))
    (x, caches), _ = jax.lax.scan(layer, (x, caches), xs)
    new_cache = None if cache is None else KVCache(*caches)
  x = norm(x, params["final_norm"].astype(dtype))
  return x, new_cache


def lm_logits(params: Params, hidden: jax.Array, cfg: ModelConfig,
              ids: Optional[Sequence[int]] = None) -> jax.Array:
  """Vocabulary logits in float32, [..., vocab]; with ``ids``, those tokens' only, [..., len]
  (a verdict's few tokens without the whole unembedding)."""
  if cfg.tie_embeddings:
    embed = params["embed"] if ids is None else params["embed"][jnp.asarray(ids)]
    w = embed.astype(hidden.dtype).T
  else:
    head = params["lm_head"] if ids is None else params["lm_head"][:, jnp.asarray(ids)]
    w = head.astype(hidden.dtype)
  logits = _dense(hidden, w).astype(jnp.float32)
  return _softcap(logits, cfg.final_softcap)


def scalar_output(params: Params, hidden: jax.Array) -> jax.Array:
  """The scalar head (value or reward): [...], or [..., K] for ``scalar_heads`` K > 1 (the
  head's rank tells them apart, so the function needs no config)."""
  head = params["scalar_head"]
  w = head["w"].astype(jnp.float32)
  return jnp.matmul(hidden.astype(jnp.float32), w) + head["b"].astype(jnp.float32)


def sequence_scores(params: Params, tokens: jax.Array, mask: jax.Array,
                    cfg: ModelConfig) -> jax.Array:
  """A reward model's score per row: the scalar head at the row's last real token, [B] (or
  [B, K] with K scalar heads).

  This is what HF's ``*ForSequenceClassification`` returns with right padding. Positions come
  from ``mask`` (0 at each row's first real token), so a left-padded row, whose last real
  token is the last column, scores the same as the same row right-padded. HF agrees on
  left-padded rows only when given ``position_ids`` (its forward otherwise counts the pads),
  and it finds the last token by ``!= pad_token_id`` rather than by a mask.
  """
  hidden, _ = forward(params, tokens, positions_from_mask(mask), mask, cfg)
  last = jnp.max(jnp.where(mask, jnp.arange(tokens.shape[1]), 0), axis=-1)
  return scalar_output(params, jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0])


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
