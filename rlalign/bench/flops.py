"""FLOP counts for the benchmark's efficiency figures.

The issue's accounting of *necessary* work: 6N FLOPs per trained token (forward and backward),
2N per token scored by the reference, 2N per generated token, where N counts the parameters
that take part in matmuls (every layer matrix and the LM head; not the embedding lookup or the
norm weights). Attention's own FLOPs (scores and mixing, which grow with sequence length) are
reported beside them, never folded into N.
"""
from __future__ import annotations

from rlalign.models import transformer as tfm


def matmul_params(cfg: tfm.ModelConfig) -> int:
  """Parameters that multiply activations once per token: N in 6N and 2N."""
  d, hd = cfg.d_model, cfg.head_dim
  per_layer = (d * cfg.n_heads * hd * 2          # q and o
               + d * cfg.n_kv_heads * hd * 2     # k and v
               + d * cfg.d_ff * 3)               # gate, up and down
  head = d * cfg.vocab_size if "lm" in cfg.heads else 0
  return cfg.n_layers * per_layer + head


def attention_flops_per_token(cfg: tfm.ModelConfig, context: float) -> float:
  """Forward FLOPs of q.k and probs.v for one token attending to ``context`` keys."""
  return 4.0 * cfg.n_layers * cfg.n_heads * cfg.head_dim * context


def grpo_iteration_flops(cfg: tfm.ModelConfig, rollouts: int, prompt_len: int,
                         new_tokens: int, updates: int = 1) -> dict:
  """Necessary FLOPs of one GRPO iteration, by part.

  Training and reference scoring run over the whole sequence (prompt and completion): the
  completion's log-probs depend on the prompt's activations. Generation counts the generated
  tokens only, as the issue's accounting does (the prefill is not counted, so this is a lower
  bound on the sampler's work).
  """
  n = matmul_params(cfg)
  seq = prompt_len + new_tokens
  parts = {
      "train": 6.0 * n * rollouts * seq * updates,
      "reference": 2.0 * n * rollouts * seq,
      "generate": 2.0 * n * rollouts * new_tokens,
  }
  parts["total"] = sum(parts.values())
  return parts


def update_flops(cfg: tfm.ModelConfig, batch: int, seq: int) -> dict:
  """FLOPs of one forward+backward over ``batch`` x ``seq`` tokens: 6N per token, plus causal
  attention (mean context (seq + 1) / 2, three times the forward for forward + backward)."""
  tokens = batch * seq
  dense = 6.0 * matmul_params(cfg) * tokens
  attention = 3.0 * attention_flops_per_token(cfg, (seq + 1) / 2) * tokens
  return {"dense_6n": dense, "attention": attention, "total": dense + attention}
