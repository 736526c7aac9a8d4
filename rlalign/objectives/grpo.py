"""GRPO: group-relative policy optimisation (Shao et al. 2024, DeepSeekMath).

Per token: -w min(rho A, clip(rho, 1-eps_low, 1+eps_high) A) + beta KL - c_ent H, where rho is
the importance ratio pi_theta/pi_old and A the sequence's advantage (or the token's, for
[B, T] advantages). Setting clip_eps_high
above clip_eps gives DAPO's clip-higher; kl_coef=0 drops the reference model entirely.

Dr.GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training") is this loss with
``objective.aggregation="constant"`` (the per-token losses summed and divided by B times a
constant length, ``loss_normalizer``, instead of each sequence's own length) and the phase's
``advantage="group_mean"`` (r - mean_g r, no division by the group's std).

``tis_cap`` > 0 turns on truncated importance sampling (Yao et al. 2025, "Your Efficient RL
Framework Secretly Brings You Off-Policy RL Training"): w = min(pi_old/pi_sampler, tis_cap)
per token (``base.tis_weights``), else w = 1. It differs from 1 only with the phase's
``rescore_old_logprobs=True``, where pi_old is recomputed by the learner.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Optional

import jax
import jax.numpy as jnp

from rlalign.objectives import base, kl


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
  clip_eps: float = 0.2
  clip_eps_high: Optional[float] = None  # None: the same as clip_eps
  kl_coef: float = 0.0
  kl_estimator: str = "k3"
  entropy_coef: float = 0.0
  aggregation: str = "token"  # "token", "sequence" or "constant" (Dr.GRPO)
  # "constant"'s length: 0 is the mask's width (sampling.max_new_tokens without
  # rl.response_buckets; with them set it, or the normaliser follows the bucket).
  loss_normalizer: int = 0
  tis_cap: float = 0.0  # truncated importance sampling cap C; 0 turns it off

  def validate(self, prefix: str = "objective") -> None:
    if not self.clip_eps > 0:
      raise ValueError(f"{prefix}.clip_eps must be positive, got {self.clip_eps}")
    if self.clip_eps_high is not None and not self.clip_eps_high > 0:
      raise ValueError(f"{prefix}.clip_eps_high must be positive, got {self.clip_eps_high}")
    if not self.kl_coef >= 0:
      raise ValueError(f"{prefix}.kl_coef must be >= 0, got {self.kl_coef}")
    if not self.entropy_coef == self.entropy_coef:
      raise ValueError(f"{prefix}.entropy_coef must be a number, got {self.entropy_coef}")
    base.check_choice(prefix, "kl_estimator", self.kl_estimator, kl.ESTIMATORS)
    base.check_choice(prefix, "aggregation", self.aggregation, base.AGGREGATIONS)
    if isinstance(self.loss_normalizer, bool) or not isinstance(self.loss_normalizer, int) \
        or self.loss_normalizer < 0:
      raise ValueError(f"{prefix}.loss_normalizer must be an integer >= 0 (0: the mask's "
                       f"width), got {self.loss_normalizer!r}")
    base.check_tis_cap(prefix, self.tis_cap)


def clipped_surrogate(log_ratio: jax.Array, advantages: jax.Array, eps_low: float,
                      eps_high: float):
  """Per-token clipped policy-gradient loss and where the clip removed the gradient."""
  ratio = jnp.exp(log_ratio)
  unclipped = ratio * advantages
  clipped = jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high) * advantages
  loss = -jnp.minimum(unclipped, clipped)
  was_clipped = (((ratio > 1.0 + eps_high) & (advantages > 0))
                 | ((ratio < 1.0 - eps_low) & (advantages < 0)))
  return loss, was_clipped


def grpo_loss(hp: GRPOConfig, outputs: Mapping[str, base.ModelOutputs],
              batch: Mapping[str, jax.Array]):
  policy = outputs["policy"]
  mask = batch["mask"]
  advantages = base.per_token(batch["advantages"])
  eps_high = hp.clip_eps if hp.clip_eps_high is None else hp.clip_eps_high
  pg, was_clipped = clipped_surrogate(policy.logprobs - batch["old_logprobs"], advantages,
                                      hp.clip_eps, eps_high)
  mean = lambda x: base.aggregate(x.astype(jnp.float32), mask, "token")
  metrics = {}
  if hp.tis_cap:
    weights = base.tis_weights(batch, hp.tis_cap)
    pg = weights * pg
    metrics["tis_weight_mean"] = mean(weights)
  per_token = pg - hp.entropy_coef * policy.entropy
  kl_tokens = kl.estimate(hp.kl_estimator, policy.logprobs, batch["ref_logprobs"])
  if hp.kl_coef:
    per_token = per_token + hp.kl_coef * kl_tokens
  loss = base.aggregate(per_token, mask, hp.aggregation, hp.loss_normalizer or None)
  metrics.update({
      "pg_loss": mean(pg),
      "kl": mean(kl_tokens),
      "entropy": mean(policy.entropy),
      "clip_frac": mean(was_clipped),
  })
  return loss, metrics


OBJECTIVE = base.register(base.Objective(
    name="grpo", hparams=GRPOConfig, loss_fn=grpo_loss,
    needs_reference=lambda hp: hp.kl_coef > 0, token_advantages=True))
