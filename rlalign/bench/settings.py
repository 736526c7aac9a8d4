"""The benchmark's fixed workloads: model shapes, GRPO settings and the shared reward.

Every framework in a comparison runs exactly these: the same weights (written once as a Hugging
Face Llama checkpoint by :mod:`rlalign.bench.fixtures`), the same prompt token ids, group size,
generation length, learning rate, KL coefficient, loss aggregation and one optimizer update
per iteration. Generation never stops early (no stop token), so every framework generates and
trains on exactly ``new_tokens`` tokens per completion.
"""
from __future__ import annotations

import dataclasses
from typing import Dict

VOCAB = 512
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
FIRST_WORD_ID = 3  # prompt tokens are drawn from [FIRST_WORD_ID, VOCAB)


@dataclasses.dataclass(frozen=True)
class ModelShape:
  """A Llama-shaped model (untied head, multi-head attention, SwiGLU)."""
  n_layers: int
  d_model: int
  n_heads: int
  d_ff: int
  vocab_size: int = VOCAB

  @property
  def head_dim(self) -> int:
    return self.d_model // self.n_heads


MODELS: Dict[str, ModelShape] = {
    "l2_d128": ModelShape(n_layers=2, d_model=128, n_heads=4, d_ff=512),
    "l4_d256": ModelShape(n_layers=4, d_model=256, n_heads=8, d_ff=1024),
    # ~20M params, for update-step MFU at sequence length 512.
    "l4_d512": ModelShape(n_layers=4, d_model=512, n_heads=8, d_ff=2048, vocab_size=2048),
}


@dataclasses.dataclass(frozen=True)
class GRPOSetting:
  name: str
  model: str
  prompts_per_step: int
  group_size: int
  new_tokens: int
  prompt_len: int = 32
  learning_rate: float = 1e-5
  kl_coef: float = 0.04
  clip_eps: float = 0.2
  aggregation: str = "sequence"  # mean over sequences of each sequence's token mean: TRL "grpo"
  temperature: float = 1.0
  steps: int = 8  # timed iterations after the first (which includes compilation)

  @property
  def rollouts(self) -> int:
    return self.prompts_per_step * self.group_size


GRPO_SETTINGS: Dict[str, GRPOSetting] = {
    "tiny": GRPOSetting("tiny", "l2_d128", prompts_per_step=2, group_size=2, new_tokens=16,
                        steps=20),
    "medium": GRPOSetting("medium", "l4_d256", prompts_per_step=4, group_size=4, new_tokens=64),
    "gen_heavy": GRPOSetting("gen_heavy", "l4_d256", prompts_per_step=8, group_size=8,
                             new_tokens=256, steps=3),
}


def even_token_fraction(completion_ids) -> float:
  """The benchmark reward on one completion (a list of ids): the fraction of even ids.

  It is cheap and dense, so the timed work is the framework's, not the reward's.
  """
  ids = list(completion_ids)
  return sum(1 for t in ids if t % 2 == 0) / max(len(ids), 1)
