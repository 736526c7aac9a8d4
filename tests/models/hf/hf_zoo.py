"""Tiny random Hugging Face models of every supported family (the ``zoo`` fixture).

Each family's config turns on the features that family needs, at sizes where they matter:
sliding windows of 4 slots on 10-token inputs, soft-caps near the logit scale, head_dim apart
from d_model / n_heads, rope scaling. Weights are redrawn at a scale where greedy decoding of
the random model is not constant, norm weights included.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, Tuple

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from rlalign.models import hf  # noqa: E402
from rlalign.models import transformer as tfm  # noqa: E402

VOCAB = 128
BASE = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, bos_token_id=1,
            eos_token_id=2)

FAMILY_CONFIGS: Dict[str, Tuple[str, Dict[str, Any]]] = {
    # Llama 3.1-style rope scaling (original length small enough to blend some frequencies),
    # attention_bias on q, k, v and o, untied.
    "llama": ("LlamaConfig", dict(
        attention_bias=True, tie_word_embeddings=False,
        rope_parameters=dict(rope_type="llama3", rope_theta=500_000.0, factor=8.0,
                             low_freq_factor=1.0, high_freq_factor=4.0,
                             original_max_position_embeddings=64))),
    # qkv bias, a sliding window on the second layer only, untied.
    "qwen2": ("Qwen2Config", dict(
        tie_word_embeddings=False, use_sliding_window=True, sliding_window=4,
        max_window_layers=1, rope_parameters=dict(rope_type="default", rope_theta=1e6))),
    # q/k norms, head_dim 32 != 64 / 4, tied (as Qwen3-0.6B).
    "qwen3": ("Qwen3Config", dict(head_dim=32, tie_word_embeddings=True)),
    # (1 + w) norms, sqrt(d) embedding scale, GeGLU, multi-query attention, tied.
    "gemma": ("GemmaConfig", dict(head_dim=16, num_key_value_heads=1,
                                  hidden_act="gelu_pytorch_tanh")),
    # + sandwich norms, soft-capping near the score scale, query_pre_attn_scalar != head_dim,
    # alternating sliding windows.
    "gemma2": ("Gemma2Config", dict(head_dim=16, query_pre_attn_scalar=24,
                                    attn_logit_softcapping=2.0, final_logit_softcapping=3.0,
                                    sliding_window=4)),
    # + q/k norms, per-layer-type rope (local theta; global theta with linear scaling).
    "gemma3_text": ("Gemma3TextConfig", dict(
        head_dim=16, sliding_window=4, layer_types=["sliding_attention", "full_attention"],
        rope_parameters=dict(
            full_attention=dict(rope_type="linear", rope_theta=1e6, factor=8.0),
            sliding_attention=dict(rope_type="default", rope_theta=10_000.0)))),
}
FAMILY_NAMES = tuple(FAMILY_CONFIGS)
# (seed, matrix scale) of the redrawn weights: picked so that greedy continuations of every
# family's random model use several distinct tokens per row rather than one repeated token.
WEIGHTS = {name: (1, 2.0) for name in FAMILY_NAMES}
WEIGHTS["gemma3_text"] = (0, 1.0)


def hf_config(family: str, **overrides):
  cls_name, extra = FAMILY_CONFIGS[family]
  kwargs = {**BASE, **extra, **overrides}
  return getattr(transformers, cls_name)(**kwargs)


def randomize_(model, seed: int, scale: float = 1.0) -> None:
  """Redraws every weight: matrices ~ N(0, scale^2/fan_in), biases ~ N(0, 0.1^2), norms around
  the identity (1 + w for Gemma's stored w, w for the rest)."""
  gen = torch.Generator().manual_seed(seed)
  plus_one = type(model.config).__name__.startswith("Gemma")
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
      if "norm" in name:
        value = 0.3 * noise + (0.0 if plus_one else 1.0)
      elif name.endswith("bias"):
        value = 0.1 * noise
      elif "embed_tokens" in name:
        # Small next to what the layers add, so a tied head does not just echo the input
        # token. Gemma multiplies by sqrt(64) = 8 on the way in.
        value = 0.3 * noise / (8.0 if plus_one else 1.0)
      else:
        value = scale * noise / np.sqrt(p.shape[-1])
      p.copy_(value.to(p.dtype))


def build_hf_model(family: str, head: str = "lm", **overrides):
  """A random eager-attention HF model of ``family`` with the given head."""
  seed, scale = WEIGHTS[family]
  seed += head != "lm"  # the reward model gets its own weights
  torch.manual_seed(seed)
  if head == "lm":
    config = hf_config(family, **overrides)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
  else:
    config = hf_config(family, num_labels=1, **overrides)
    model = transformers.AutoModelForSequenceClassification.from_config(
        config, attn_implementation="eager")
  randomize_(model, seed, scale)
  return model.eval()


@dataclasses.dataclass
class Built:
  model: Any        # the HF torch model
  path: str         # its saved checkpoint directory
  cfg: tfm.ModelConfig
  params: Any


class Zoo:
  """Builds, saves and imports each (family, head) once per session."""

  def __init__(self, root):
    self.root = root
    self._cache: Dict[Tuple[str, str], Built] = {}

  def get(self, family: str, head: str = "lm") -> Built:
    key = (family, head)
    if key not in self._cache:
      model = build_hf_model(family, head)
      path = os.path.join(str(self.root), f"{family}-{head}")
      model.save_pretrained(path, safe_serialization=True)
      cfg, params = hf.load_hf_checkpoint(path)
      self._cache[key] = Built(model, path, cfg, params)
    return self._cache[key]


def left_padded_batch(seed: int = 0, batch: int = 3, length: int = 10):
  """Random prompts over [3, VOCAB) left-padded with 0; row 0 unpadded."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, VOCAB, size=(batch, length)).astype(np.int32)
  mask = np.ones((batch, length), bool)
  for b, pad in enumerate([0, 3, 6][:batch]):
    tokens[b, :pad] = 0
    mask[b, :pad] = False
  return tokens, mask


def hf_positions(mask: np.ndarray) -> np.ndarray:
  """The position ids HF's generate uses for left padding: 0 at the first real token."""
  return np.maximum(np.cumsum(mask, axis=-1) - 1, 0)
