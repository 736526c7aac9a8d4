"""Hugging Face model families: ``config.json`` <-> :class:`ModelConfig`, and tensor names.

Supported (architecture -> family, head)::

  LlamaForCausalLM / LlamaForSequenceClassification                      llama
  Qwen2ForCausalLM / Qwen2ForSequenceClassification                      qwen2 (Qwen2, Qwen2.5)
  Qwen3ForCausalLM / Qwen3ForSequenceClassification                      qwen3
  GemmaForCausalLM / GemmaForSequenceClassification                      gemma
  Gemma2ForCausalLM / Gemma2ForSequenceClassification                    gemma2
  Gemma3ForCausalLM / Gemma3TextForSequenceClassification                gemma3_text

``*ForCausalLM`` loads with the "lm" head, ``*ForSequenceClassification`` (one label: a reward
model) with the "scalar" head. Every family names its tensors the same way; the table differs
only by which optional tensors the config implies (:func:`tensor_table`)::

  HF name (per layer i: model.layers.{i}.)    our path           HF shape -> ours
  model.embed_tokens.weight                   embed              [V, d] as is
  input_layernorm.weight                      layers/attn_norm   [d]
  self_attn.{q,k,v}_proj.weight               layers/{q,k,v}     [H*hd, d] -> [d, H, hd]
  self_attn.{q,k,v}_proj.bias                 layers/{q,k,v}_bias [H*hd] -> [H, hd]
  self_attn.o_proj.weight                     layers/o           [d, H*hd] -> [H, hd, d]
  self_attn.o_proj.bias                       layers/o_bias      [d]
  self_attn.{q,k}_norm.weight                 layers/{q,k}_norm  [hd]
  post_attention_layernorm.weight             layers/mlp_norm        (Llama, Qwen, Gemma 1)
                                              layers/post_attn_norm  (Gemma 2/3)
  pre_feedforward_layernorm.weight            layers/mlp_norm        (Gemma 2/3)
  post_feedforward_layernorm.weight           layers/post_mlp_norm   (Gemma 2/3)
  mlp.{gate,up}_proj.weight                   layers/{gate,up}   [F, d] -> [d, F]
  mlp.down_proj.weight                        layers/down        [d, F] -> [F, d]
  model.norm.weight                           final_norm         [d]
  lm_head.weight                              lm_head            [V, d] -> [d, V] (untied only)
  score.weight                                scalar_head/w      [1, d] -> [d]; the bias is 0
                                                                 [K, d] -> [d, K] (K labels)

HF Linear weights are [out, in]; ours are [in, out] with the heads axis split out. Gemma's
norm weights are stored as w and applied as (1 + w) on both sides, so they copy unchanged.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from rlalign.models.transformer import ModelConfig, RopeScaling

_REQUIRED = object()


@dataclasses.dataclass(frozen=True)
class Family:
  name: str             # also the HF model_type
  causal_lm: str
  seq_cls: str
  gemma: bool = False   # (1 + w) norms, sqrt(d) embedding scale, GeGLU
  gemma2: bool = False  # sandwich norms, soft-capping, query_pre_attn_scalar, sliding windows
  act_key: str = "hidden_act"
  default_head_dim: Optional[int] = None  # None: hidden_size // num_attention_heads
  default_tied: bool = False


FAMILIES: Dict[str, Family] = {f.name: f for f in (
    Family("llama", "LlamaForCausalLM", "LlamaForSequenceClassification"),
    Family("qwen2", "Qwen2ForCausalLM", "Qwen2ForSequenceClassification"),
    Family("qwen3", "Qwen3ForCausalLM", "Qwen3ForSequenceClassification", default_head_dim=128),
    Family("gemma", "GemmaForCausalLM", "GemmaForSequenceClassification", gemma=True,
           default_head_dim=256, default_tied=True),
    Family("gemma2", "Gemma2ForCausalLM", "Gemma2ForSequenceClassification", gemma=True,
           gemma2=True, act_key="hidden_activation", default_head_dim=256, default_tied=True),
    Family("gemma3_text", "Gemma3ForCausalLM", "Gemma3TextForSequenceClassification", gemma=True,
           gemma2=True, act_key="hidden_activation", default_head_dim=256, default_tied=True),
)}
ARCHITECTURES: Dict[str, Tuple[str, str]] = {}
for _f in FAMILIES.values():
  ARCHITECTURES[_f.causal_lm] = (_f.name, "lm")
  ARCHITECTURES[_f.seq_cls] = (_f.name, "scalar")

_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh",
                "gelu_tanh": "gelu_tanh", "gelu": "gelu"}
_ROPE_TYPES = ("default", "linear", "llama3")
# Architecture fields of ModelConfig that a config.json determines (the rest are run choices).
# (scalar_heads is the score layer's label count, which only a *ForSequenceClassification
# config.json records, and the exporter writes it from the config directly.)
_RUN_FIELDS = ("heads", "scalar_heads", "dtype", "param_dtype", "remat")


class HFConfigError(ValueError):
  """A config.json this module cannot map; the message names the key (or value) and the file."""


def resolve_family(hf: Mapping[str, Any], source: str = "config.json") -> Tuple[Family, str]:
  """The family and head ("lm" or "scalar") a config.json describes."""
  archs = hf.get("architectures") or []
  model_type = hf.get("model_type")
  if archs:
    if len(archs) != 1 or archs[0] not in ARCHITECTURES:
      raise HFConfigError(f"{source}: unsupported architectures {archs}; supported: "
                          f"{sorted(ARCHITECTURES)}")
    family, head = ARCHITECTURES[archs[0]]
    if model_type is not None and model_type != family:
      raise HFConfigError(f"{source}: model_type {model_type!r} does not match architecture "
                          f"{archs[0]!r} (expected model_type {family!r})")
    return FAMILIES[family], head
  if model_type not in FAMILIES:
    raise HFConfigError(f"{source}: unsupported model_type {model_type!r}; supported: "
                        f"{sorted(FAMILIES)}")
  return FAMILIES[model_type], "lm"


def _get(hf: Mapping[str, Any], key: str, source: str, default: Any = _REQUIRED) -> Any:
  value = hf.get(key)
  if value is None:
    if default is _REQUIRED:
      raise HFConfigError(f"{source}: missing required key {key!r}")
    return default
  return value


def _rope(hf: Mapping[str, Any], fam: Family, source: str) -> Tuple[float, RopeScaling, float]:
  """(theta, scaling, local theta) from ``rope_parameters`` (transformers 5) or the older
  ``rope_theta`` / ``rope_scaling`` / ``rope_local_base_freq`` keys."""
  params = dict(hf.get("rope_parameters") or {})
  local: Optional[dict] = None
  if fam.name == "gemma3_text":
    if "full_attention" in params or "sliding_attention" in params:
      local = dict(params.get("sliding_attention") or {})
      params = dict(params.get("full_attention") or {})
    else:
      local = {"rope_theta": hf.get("rope_local_base_freq") or 10_000.0}
    params.setdefault("rope_theta", hf.get("rope_theta") or 1_000_000.0)
    local.setdefault("rope_theta", 10_000.0)
  if not params.get("rope_type") and not params.get("type"):
    params.update(hf.get("rope_scaling") or {})
  params.setdefault("rope_theta", hf.get("rope_theta") or 10_000.0)
  kind = params.get("rope_type") or params.get("type") or "default"
  if kind not in _ROPE_TYPES:
    raise HFConfigError(f"{source}: unsupported rope type {kind!r}; supported: {list(_ROPE_TYPES)}")
  if float(params.get("partial_rotary_factor") or 1.0) != 1.0:
    raise HFConfigError(f"{source}: partial_rotary_factor="
                        f"{params['partial_rotary_factor']} is not supported")
  if kind == "default":
    scaling = RopeScaling()
  elif kind == "linear":
    scaling = RopeScaling("linear", float(_get(params, "factor", f"{source} rope parameters")))
  else:
    where = f"{source} rope parameters"
    scaling = RopeScaling(
        "llama3", float(_get(params, "factor", where)),
        float(_get(params, "low_freq_factor", where)),
        float(_get(params, "high_freq_factor", where)),
        int(params.get("original_max_position_embeddings")
            or _get(hf, "max_position_embeddings", source)))
  local_theta = 0.0
  if local is not None:
    local_kind = local.get("rope_type") or local.get("type") or "default"
    if local_kind != "default":
      raise HFConfigError(f"{source}: rope type {local_kind!r} on sliding_attention layers is "
                          "not supported; supported: ['default']")
    local_theta = float(local["rope_theta"])
  return float(params["rope_theta"]), scaling, local_theta


def _windows(hf: Mapping[str, Any], fam: Family, n_layers: int, source: str) -> Tuple[int, ...]:
  """Per-layer sliding windows (0: full attention), following each family's HF defaults."""
  if fam.name in ("qwen2", "qwen3"):
    if not hf.get("use_sliding_window"):
      return ()  # HF drops sliding_window when use_sliding_window is off
    first = int(hf.get("max_window_layers", 28))
    default_types = ["sliding_attention" if i >= first else "full_attention"
                     for i in range(n_layers)]
  elif fam.name == "gemma2":
    default_types = ["sliding_attention" if (i + 1) % 2 else "full_attention"
                     for i in range(n_layers)]
  elif fam.name == "gemma3_text":
    pattern = int(hf.get("sliding_window_pattern") or hf.get("_sliding_window_pattern") or 6)
    default_types = ["sliding_attention" if (i + 1) % pattern else "full_attention"
                     for i in range(n_layers)]
  else:
    return ()
  window = int(hf.get("sliding_window") or 0) if "sliding_window" in hf else 4096
  types = hf.get("layer_types") or default_types
  if len(types) != n_layers:
    raise HFConfigError(f"{source}: layer_types has {len(types)} entries for "
                        f"num_hidden_layers={n_layers}")
  unknown = sorted(set(types) - {"sliding_attention", "full_attention"})
  if unknown:
    raise HFConfigError(f"{source}: unsupported layer_types value {unknown[0]!r}; supported: "
                        "['full_attention', 'sliding_attention']")
  windows = tuple(window if t == "sliding_attention" else 0 for t in types)
  return windows if any(windows) else ()


def model_config_from_hf(hf: Mapping[str, Any], *, source: str = "config.json",
                         heads: Optional[Sequence[str]] = None,
                         dtype: str = "float32",
                         scalar_heads: Optional[int] = None) -> ModelConfig:
  """Maps a parsed HF ``config.json`` onto a :class:`ModelConfig`.

  ``heads`` defaults to the architecture's own head; ``dtype`` sets both the stored params and
  the compute dtype. Missing optional keys take the HF class defaults of the family. A
  sequence-classification checkpoint's labels are its scalar heads (one: a reward model; K: an
  ensemble of K heads); ``scalar_heads`` sets how many a checkpoint without a score layer gets.
  """
  fam, head = resolve_family(hf, source)
  labels = scalar_heads or 1
  if head == "scalar":
    labels = int(hf.get("num_labels") or len(hf.get("id2label") or {}) or 2)
    if scalar_heads and scalar_heads != labels:
      raise HFConfigError(f"{source}: the checkpoint's score layer has {labels} labels "
                          f"(num_labels/id2label), but scalar_heads={scalar_heads} was asked for")
  if hf.get("use_bidirectional_attention"):
    raise HFConfigError(f"{source}: use_bidirectional_attention=true is not supported")
  if hf.get("mlp_bias"):
    raise HFConfigError(f"{source}: mlp_bias=true is not supported")
  d = int(_get(hf, "hidden_size", source))
  n_heads = int(_get(hf, "num_attention_heads", source))
  n_layers = int(_get(hf, "num_hidden_layers", source))
  head_dim = hf.get("head_dim") or fam.default_head_dim or d // n_heads
  act_name = hf.get(fam.act_key) or hf.get("hidden_act") or (
      "gelu_pytorch_tanh" if fam.gemma else "silu")
  if fam.name == "gemma" and act_name == "gelu":
    act_name = "gelu_pytorch_tanh"  # HF reads Gemma 1's legacy "gelu" as the tanh approximation
  if act_name not in _ACTIVATIONS:
    raise HFConfigError(f"{source}: unsupported activation {fam.act_key}={act_name!r}; "
                        f"supported: {sorted(_ACTIVATIONS)}")
  theta, scaling, local_theta = _rope(hf, fam, source)
  attention_bias = bool(hf.get("attention_bias", False))
  cfg = ModelConfig(
      vocab_size=int(_get(hf, "vocab_size", source)),
      d_model=d, n_layers=n_layers, n_heads=n_heads,
      n_kv_heads=int(hf.get("num_key_value_heads") or n_heads),
      head_dim=int(head_dim),
      d_ff=int(_get(hf, "intermediate_size", source)),
      rope_theta=theta, rope_scaling=scaling, rope_local_theta=local_theta,
      norm_eps=float(hf.get("rms_norm_eps") or 1e-6),
      tie_embeddings=bool(hf.get("tie_word_embeddings", fam.default_tied)),
      heads=tuple(heads or (head,)), scalar_heads=labels, dtype=dtype, param_dtype=dtype,
      qkv_bias=attention_bias or fam.name == "qwen2",
      o_bias=attention_bias,
      qk_norm=fam.name in ("qwen3", "gemma3_text"),
      norm_plus_one=fam.gemma, embed_scale=fam.gemma,
      mlp_activation=_ACTIVATIONS[act_name],
      sandwich_norms=fam.gemma2,
      attn_softcap=float(hf.get("attn_logit_softcapping") or 0.0)
      if "attn_logit_softcapping" in hf else (50.0 if fam.name == "gemma2" else 0.0),
      final_softcap=float(hf.get("final_logit_softcapping") or 0.0)
      if "final_logit_softcapping" in hf else (30.0 if fam.name == "gemma2" else 0.0),
      query_pre_attn_scalar=float(hf.get("query_pre_attn_scalar") or 256) if fam.gemma2 else 0.0,
      attn_windows=_windows(hf, fam, n_layers, source),
  )
  try:
    cfg.validate("model")
  except ValueError as e:
    raise HFConfigError(f"{source}: maps to an invalid model config: {e}") from None
  return cfg


def architecture_fields(cfg: ModelConfig) -> Dict[str, Any]:
  """The fields a config.json determines (everything but the heads and run choices)."""
  out = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
         if f.name not in _RUN_FIELDS}
  # Spellings that mean the same model compare equal.
  out["query_pre_attn_scalar"] = cfg.query_pre_attn_scalar or float(cfg.head_dim)
  out["attn_windows"] = cfg.attn_windows if any(cfg.attn_windows) else ()
  local = cfg.rope_local_theta if out["attn_windows"] else 0.0
  if local == cfg.rope_theta and cfg.rope_scaling.kind == "none":
    local = 0.0
  out["rope_local_theta"] = local
  if out["rope_scaling"].kind == "linear":  # fields a scaling kind ignores do not count
    out["rope_scaling"] = RopeScaling("linear", out["rope_scaling"].factor)
  elif out["rope_scaling"].kind == "none":
    out["rope_scaling"] = RopeScaling()
  return out


def _rope_params(theta: float, s: RopeScaling) -> dict:
  if s.kind == "none":
    return {"rope_type": "default", "rope_theta": theta}
  if s.kind == "linear":
    return {"rope_type": "linear", "rope_theta": theta, "factor": s.factor}
  return {"rope_type": "llama3", "rope_theta": theta, "factor": s.factor,
          "low_freq_factor": s.low_freq_factor, "high_freq_factor": s.high_freq_factor,
          "original_max_position_embeddings": s.original_max_position_embeddings}


def hf_config_from_model(cfg: ModelConfig, family: str, head: str = "lm",
                         template: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
  """The config.json for ``cfg`` as ``family``, keeping a template's other keys (token ids,
  max_position_embeddings, ...). Raises if the family cannot express the config."""
  if family not in FAMILIES:
    raise HFConfigError(f"unsupported family {family!r}; supported: {sorted(FAMILIES)}")
  fam = FAMILIES[family]
  hf = dict(template or {})
  for stale in ("rope_theta", "rope_scaling", "rope_local_base_freq", "sliding_window_pattern",
                "_sliding_window_pattern", "torch_dtype", "layer_types", "num_labels",
                "rlalign_score_bias"):
    hf.pop(stale, None)
  hf.update(
      architectures=[fam.causal_lm if head == "lm" else fam.seq_cls], model_type=fam.name,
      vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
      num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
      num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.head_dim, rms_norm_eps=cfg.norm_eps,
      tie_word_embeddings=cfg.tie_embeddings, dtype=cfg.param_dtype,
  )
  act = {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu"}[cfg.mlp_activation]
  hf[fam.act_key] = act
  if fam.act_key != "hidden_act":
    hf.pop("hidden_act", None)
  if family != "qwen2":
    hf["attention_bias"] = cfg.o_bias
  if family == "llama":
    hf["mlp_bias"] = False
  rope = _rope_params(cfg.rope_theta, cfg.rope_scaling)
  if family == "gemma3_text":
    rope = {"full_attention": rope, "sliding_attention": {
        "rope_type": "default", "rope_theta": cfg.rope_local_theta or cfg.rope_theta}}
  hf["rope_parameters"] = rope
  windows = cfg.attn_windows or (0,) * cfg.n_layers
  sizes = sorted(set(windows) - {0})
  if len(sizes) > 1:
    raise HFConfigError(f"family {family!r} has one sliding_window size; model.attn_windows "
                        f"has several: {sizes}")
  layer_types = ["sliding_attention" if w else "full_attention" for w in windows]
  if family in ("qwen2", "qwen3"):
    hf.update(use_sliding_window=bool(sizes), sliding_window=sizes[0] if sizes else None,
              max_window_layers=layer_types.index("sliding_attention") if sizes
              else cfg.n_layers)
    if sizes:
      hf["layer_types"] = layer_types
  if fam.gemma2:
    scalar = cfg.query_pre_attn_scalar or cfg.head_dim
    hf.update(query_pre_attn_scalar=int(scalar) if float(scalar).is_integer() else scalar,
              attn_logit_softcapping=cfg.attn_softcap or None,
              final_logit_softcapping=cfg.final_softcap or None,
              sliding_window=sizes[0] if sizes else hf.get("sliding_window") or 4096,
              layer_types=layer_types)
  if head == "scalar":
    labels = [f"LABEL_{i}" for i in range(cfg.scalar_heads)]
    hf.update(id2label={str(i): name for i, name in enumerate(labels)},
              label2id={name: i for i, name in enumerate(labels)})
  else:
    hf.pop("id2label", None)
    hf.pop("label2id", None)
  # Read it back: anything the family cannot express shows up as a changed field.
  back = architecture_fields(model_config_from_hf(hf, source=f"the exported {family} config"))
  want = architecture_fields(cfg)
  diff = [k for k in want if back[k] != want[k]]
  if diff:
    raise HFConfigError(f"family {family!r} cannot express model." + ", model.".join(
        f"{k}={want[k]!r} (it would read back as {back[k]!r})" for k in diff))
  return hf


# ----------------------------------------------------------------------------- tensor names


class Layout(NamedTuple):
  """How one HF tensor maps onto one (per-layer) slice of our param.

  ``place(target, rows, a)`` writes HF rows ``a : a + len(rows)`` (leading-axis slices) into
  our slice ``target``, so a large tensor can be copied a band of rows at a time; a band must
  start and end on a multiple of ``row_align(our_shape)`` rows.
  """
  hf_shape: Callable[[Tuple[int, ...]], Tuple[int, ...]]  # our slice shape -> HF shape
  place: Callable[[np.ndarray, np.ndarray, int], None]
  to_hf: Callable[[np.ndarray], np.ndarray]
  row_align: Callable[[Tuple[int, ...]], int] = lambda s: 1


def _place_copy(t, rows, a):
  t[a:a + len(rows)] = rows


def _place_linear(t, rows, a):  # HF [out, in] rows are our output columns
  t[:, a:a + len(rows)] = rows.T


def _place_in_heads(t, rows, a):  # HF [H*hd, d] rows, whole heads, into our [d, H, hd]
  hd = t.shape[2]
  t[:, a // hd:(a + len(rows)) // hd, :] = rows.reshape(-1, hd, t.shape[0]).transpose(2, 0, 1)


def _place_out_heads(t, rows, a):  # HF [d, H*hd] rows are our output columns of [H, hd, d]
  t[:, :, a:a + len(rows)] = rows.reshape(len(rows), t.shape[0], t.shape[1]).transpose(1, 2, 0)


def _place_head_bias(t, rows, a):  # HF [H*hd] into our [H, hd]
  hd = t.shape[1]
  t[a // hd:(a + len(rows)) // hd] = rows.reshape(-1, hd)


def _place_score(t, rows, a):  # HF [1, d] into our [d]
  t[...] = rows.reshape(t.shape)


COPY = Layout(lambda s: s, _place_copy, lambda a: a)
LINEAR = Layout(lambda s: s[::-1], _place_linear, lambda a: a.T)  # [out, in] <-> [in, out]
IN_HEADS = Layout(  # [H*hd, d] <-> [d, H, hd]
    lambda s: (s[1] * s[2], s[0]), _place_in_heads,
    lambda a: a.transpose(1, 2, 0).reshape(a.shape[1] * a.shape[2], a.shape[0]),
    lambda s: s[2])
OUT_HEADS = Layout(  # [d, H*hd] <-> [H, hd, d]
    lambda s: (s[2], s[0] * s[1]), _place_out_heads,
    lambda a: a.transpose(2, 0, 1).reshape(a.shape[2], a.shape[0] * a.shape[1]))
HEAD_BIAS = Layout(lambda s: (s[0] * s[1],), _place_head_bias, lambda a: a.reshape(-1),
                   lambda s: s[1])
SCORE = Layout(lambda s: (1,) + s, _place_score, lambda a: a.reshape(1, -1))


class TensorMap(NamedTuple):
  hf: str                  # with "{i}" for the layer index when stacked
  path: Tuple[str, ...]    # our params path
  layout: Layout

  @property
  def stacked(self) -> bool:
    return "{i}" in self.hf


def tensor_table(cfg: ModelConfig, heads: Sequence[str]) -> List[TensorMap]:
  """Every HF tensor of a checkpoint for ``cfg`` carrying ``heads``, and where it goes."""
  layer = "model.layers.{i}."
  attn = [("q", IN_HEADS), ("k", IN_HEADS), ("v", IN_HEADS)]
  table = [TensorMap("model.embed_tokens.weight", ("embed",), COPY),
           TensorMap(layer + "input_layernorm.weight", ("layers", "attn_norm"), COPY)]
  for name, layout in attn:
    table.append(TensorMap(layer + f"self_attn.{name}_proj.weight", ("layers", name), layout))
    if cfg.qkv_bias:
      table.append(TensorMap(layer + f"self_attn.{name}_proj.bias", ("layers", f"{name}_bias"),
                             HEAD_BIAS))
  table.append(TensorMap(layer + "self_attn.o_proj.weight", ("layers", "o"), OUT_HEADS))
  if cfg.o_bias:
    table.append(TensorMap(layer + "self_attn.o_proj.bias", ("layers", "o_bias"), COPY))
  if cfg.qk_norm:
    table += [TensorMap(layer + "self_attn.q_norm.weight", ("layers", "q_norm"), COPY),
              TensorMap(layer + "self_attn.k_norm.weight", ("layers", "k_norm"), COPY)]
  if cfg.sandwich_norms:
    table += [
        TensorMap(layer + "post_attention_layernorm.weight", ("layers", "post_attn_norm"), COPY),
        TensorMap(layer + "pre_feedforward_layernorm.weight", ("layers", "mlp_norm"), COPY),
        TensorMap(layer + "post_feedforward_layernorm.weight", ("layers", "post_mlp_norm"), COPY)]
  else:
    table.append(TensorMap(layer + "post_attention_layernorm.weight", ("layers", "mlp_norm"),
                           COPY))
  table += [TensorMap(layer + f"mlp.{n}_proj.weight", ("layers", n), LINEAR)
            for n in ("gate", "up", "down")]
  table.append(TensorMap("model.norm.weight", ("final_norm",), COPY))
  if "lm" in heads and not cfg.tie_embeddings:
    table.append(TensorMap("lm_head.weight", ("lm_head",), LINEAR))
  if "scalar" in heads:
    table.append(TensorMap("score.weight", ("scalar_head", "w"),
                           SCORE if cfg.scalar_heads == 1 else LINEAR))
  return table


def hf_names(entry: TensorMap, n_layers: int) -> List[str]:
  return [entry.hf.format(i=i) for i in range(n_layers)] if entry.stacked else [entry.hf]


# Tensors some checkpoints carry that hold nothing to load (old rotary caches).
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
