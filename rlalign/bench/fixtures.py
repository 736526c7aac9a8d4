"""Writes the benchmark's shared inputs: one HF Llama checkpoint per model shape, with a
word-level tokenizer, and the prompts of each GRPO setting.

Every framework loads the same files, so every comparison runs on identical weights and
identical prompt token ids::

  <root>/models/<model>/      config.json, model.safetensors, tokenizer.json, tokenizer_config.json
  <root>/prompts/<setting>.json  {"ids": [[...], ...], "text": ["t17 t4 ...", ...]}

Token ``i`` of the vocabulary is the word ``t<i>`` (specials: ``<pad>``, ``<s>``, ``</s>``),
and texts are ids joined by spaces, so text and ids round-trip exactly through any tokenizer
front end.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List

import jax
import numpy as np

from rlalign.bench import settings as S
from rlalign.models import transformer as tfm

SPECIALS = {S.PAD_ID: "<pad>", S.BOS_ID: "<s>", S.EOS_ID: "</s>"}


def word(i: int) -> str:
  return SPECIALS.get(i, f"t{i}")


def model_config(shape: S.ModelShape, dtype: str = "float32") -> tfm.ModelConfig:
  return tfm.ModelConfig(
      vocab_size=shape.vocab_size, d_model=shape.d_model, n_layers=shape.n_layers,
      n_heads=shape.n_heads, n_kv_heads=shape.n_heads, head_dim=shape.head_dim,
      d_ff=shape.d_ff, tie_embeddings=False, norm_eps=1e-6, rope_theta=10_000.0,
      dtype=dtype, param_dtype="float32")


def write_tokenizer(directory: str, vocab_size: int) -> None:
  import tokenizers
  from tokenizers import models, pre_tokenizers, decoders
  vocab = {word(i): i for i in range(vocab_size)}
  tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
  tok.add_special_tokens(list(SPECIALS.values()))
  tok.save(os.path.join(directory, "tokenizer.json"))
  with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
    json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "<pad>",
               "bos_token": "<s>", "eos_token": "</s>", "model_max_length": 4096,
               "padding_side": "left", "add_bos_token": False}, f, indent=2)


def write_model(root: str, name: str, seed: int = 0) -> str:
  """The HF checkpoint directory of model ``name``, written once (random weights, ``seed``)."""
  from rlalign.models import hf
  path = os.path.join(root, "models", name)
  if os.path.exists(os.path.join(path, "config.json")):
    return path
  shape = S.MODELS[name]
  cfg = model_config(shape)
  params = jax.jit(tfm.init, static_argnums=0)(cfg, jax.random.key(seed))
  template = {"pad_token_id": S.PAD_ID, "bos_token_id": S.BOS_ID, "eos_token_id": S.EOS_ID,
              "max_position_embeddings": 4096}
  tok_dir = os.path.join(root, "tokenizer", str(shape.vocab_size))
  if not os.path.exists(os.path.join(tok_dir, "tokenizer.json")):
    os.makedirs(tok_dir, exist_ok=True)
    write_tokenizer(tok_dir, shape.vocab_size)
  return hf.save_hf_checkpoint(params, cfg, path, family="llama", hf_config_template=template,
                               tokenizer_dir=tok_dir)


def prompt_ids(n: int, length: int, vocab_size: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(S.FIRST_WORD_ID, vocab_size, (n, length),
                                              dtype=np.int64).astype(np.int32)


def write_prompts(root: str, setting: S.GRPOSetting, n_batches: int) -> str:
  """``n_batches`` batches of ``prompts_per_step`` prompts for ``setting``."""
  path = os.path.join(root, "prompts", f"{setting.name}.json")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  vocab = S.MODELS[setting.model].vocab_size
  ids = prompt_ids(n_batches * setting.prompts_per_step, setting.prompt_len, vocab)
  data = {"ids": ids.tolist(), "text": [" ".join(word(int(i)) for i in row) for row in ids]}
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(data, f)
  os.replace(tmp, path)
  return path


def write_all(root: str) -> Dict[str, str]:
  out = {name: write_model(root, name) for name in S.MODELS}
  for setting in S.GRPO_SETTINGS.values():
    out[f"prompts/{setting.name}"] = write_prompts(root, setting, setting.steps + 2)
  return out


if __name__ == "__main__":
  import sys
  print(json.dumps(write_all(sys.argv[1] if len(sys.argv) > 1 else "/tmp/rlalign_bench"),
                   indent=2))
