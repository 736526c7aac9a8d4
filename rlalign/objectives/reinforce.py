"""REINFORCE with a sampled baseline: RLOO and ReMax, one sequence-level loss.

RLOO (Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for
Learning from Human Feedback in LLMs") and ReMax (Li et al. 2023, "ReMax: A Simple, Effective,
and Efficient Reinforcement Learning Method for Aligning Large Language Models") optimise
the whole completion as one action::

  loss = -1/B sum_i A_i log pi_theta(y_i | x),   log pi_theta(y_i | x) = sum_t log pi(y_it)

and differ only in the baseline inside A_i: RLOO's is the mean reward of the prompt's other
samples (``advantage="leave_one_out"``), ReMax's the reward of the prompt's greedy completion
(``advantage="greedy_baseline"``).

The form used, so that the update is still right when a batch is reused (``rl.epochs`` or
``rl.minibatches`` > 1, or ``rescore_old_logprobs``), weights each token by its importance
ratio rho_it = pi_theta(y_it) / pi_old(y_it) under stop_gradient::

  loss = -1/B sum_i A_i sum_t sg(rho_it) log pi_theta(y_it)

On-policy (rho = 1) its value is the formula above and its gradient -A_i grad log pi(y_i);
off-policy the gradient is -A_i sum_t rho_it grad log pi(y_it) = grad of -A_i sum_t rho_it, the
unclipped token-level importance-sampled policy gradient (nothing bounds rho, so keep reuse
small). ``kl_coef`` > 0 adds beta times the sequence KL, the per-token estimate (k3 by default,
as GRPO) summed over each row's tokens and averaged over rows, matching the surrogate's sum.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp

from rlalign.objectives import base, kl


@dataclasses.dataclass(frozen=True)
class ReinforceConfig:
  kl_coef: float = 0.0
  kl_estimator: str = "k3"

  def validate(self, prefix: str = "objective") -> None:
    if not self.kl_coef >= 0:
      raise ValueError(f"{prefix}.kl_coef must be >= 0, got {self.kl_coef}")
    base.check_choice(prefix, "kl_estimator", self.kl_estimator, kl.ESTIMATORS)


def reinforce_loss(hp: ReinforceConfig, outputs: Mapping[str, base.ModelOutputs],
                   batch: Mapping[str, jax.Array]):
  policy = outputs["policy"]
  mask = batch["mask"].astype(bool)
  advantages = base.per_token(batch["advantages"]).astype(jnp.float32)
  logprobs = jnp.where(mask, policy.logprobs, 0.0)
  ratio = jax.lax.stop_gradient(jnp.exp(jnp.where(mask, policy.logprobs
                                                  - batch["old_logprobs"], 0.0)))
  # A [B] advantage broadcasts over tokens; a [B, T] one weighs each token's term.
  pg = -jnp.mean(base.sequence_sum(advantages * ratio * logprobs, mask))
  kl_tokens = kl.estimate(hp.kl_estimator, policy.logprobs, batch["ref_logprobs"])
  loss = pg
  if hp.kl_coef:
    loss = loss + hp.kl_coef * jnp.mean(base.sequence_sum(jnp.where(mask, kl_tokens, 0.0),
                                                          mask))
  mean = lambda x: base.aggregate(x.astype(jnp.float32), mask, "token")
  metrics = {
      "pg_loss": pg,
      "kl": mean(kl_tokens),
      "entropy": mean(policy.entropy),
      "ratio_mean": mean(ratio),
  }
  return loss, metrics


RLOO = base.register(base.Objective(
    name="rloo", hparams=ReinforceConfig, loss_fn=reinforce_loss,
    needs_reference=lambda hp: hp.kl_coef > 0, advantage="leave_one_out",
    token_advantages=True))

REMAX = base.register(base.Objective(
    name="remax", hparams=ReinforceConfig, loss_fn=reinforce_loss,
    needs_reference=lambda hp: hp.kl_coef > 0, advantage="greedy_baseline"))
