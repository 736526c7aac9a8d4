"""REINFORCE++ (Hu 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning Large
Language Models"): PPO's clipped token loss without a critic, its advantages the
discounted return-to-go of per-token rewards normalised over the whole batch.

``prepare`` runs once per iteration and overwrites the phase estimator's ``advantages``
(the default, "none", passes the rewards through: nothing is computed only to be discarded,
and any group size works; the normalisation is over the batch, not per prompt):

  r_t   = [t = last real token] r(x, y) - kl_in_reward (log pi_old(y_t) - log pi_ref(y_t))
  G_t   = sum_{k >= t} gamma^(k - t) r_k               (to the row's last real token)
  A_t   = (G_t - mean G) / std G                       over every real token of the batch

(``ppo.token_rewards``; ``advantages.gae`` with zero values and lambda = 1, which is exactly
the discounted return; ``ppo.masked_whiten``). The loss, per token and aggregated like
GRPO's::

  -min(rho_t A_t, clip(rho_t, 1 - eps, 1 + eps) A_t) + kl_coef KL - entropy_coef H

The paper's recipe puts the KL in the reward (``kl_in_reward`` > 0), which needs a reference.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import jax
import jax.numpy as jnp

from rlalign.objectives import advantages as adv_lib
from rlalign.objectives import base, grpo, kl
from rlalign.objectives.ppo import masked_whiten, token_rewards


@dataclasses.dataclass(frozen=True)
class ReinforcePPConfig:
  gamma: float = 1.0          # discount of the return-to-go over completion tokens
  clip_eps: float = 0.2
  kl_in_reward: float = 0.0   # beta of the per-token reward -beta (log pi_old - log pi_ref)
  kl_coef: float = 0.0        # KL(pi || pi_ref) in the loss, with kl_estimator, as GRPO
  kl_estimator: str = "k3"
  entropy_coef: float = 0.0
  aggregation: str = "token"  # as GRPO's: "token", "sequence" or "constant"

  def validate(self, prefix: str = "objective") -> None:
    if not 0.0 <= self.gamma <= 1.0:
      raise ValueError(f"{prefix}.gamma must be in [0, 1], got {self.gamma}")
    if not self.clip_eps > 0:
      raise ValueError(f"{prefix}.clip_eps must be positive, got {self.clip_eps}")
    for name in ("kl_in_reward", "kl_coef"):
      value = getattr(self, name)
      if not value >= 0:
        raise ValueError(f"{prefix}.{name} must be >= 0, got {value}")
    if not self.entropy_coef == self.entropy_coef:
      raise ValueError(f"{prefix}.entropy_coef must be a number, got {self.entropy_coef}")
    base.check_choice(prefix, "kl_estimator", self.kl_estimator, kl.ESTIMATORS)
    base.check_choice(prefix, "aggregation", self.aggregation, base.AGGREGATIONS)


def reinforce_pp_prepare(hp: ReinforcePPConfig, batch: Mapping[str, jax.Array],
                         score: Callable[[str, tuple], base.ModelOutputs],
                         group_size: int = 1):
  """Per-token rewards, their returns-to-go and the whitened advantages, into the batch."""
  del score, group_size  # no critic; the normalisation is over the batch, not the group
  mask = batch["mask"]
  rewards = token_rewards(hp, batch)
  _, returns = adv_lib.gae(rewards, jnp.zeros_like(rewards), mask, hp.gamma, 1.0)
  mean = lambda x: base.aggregate(x, mask, "token")
  metrics = {"return_mean": mean(returns), "token_reward_mean": mean(rewards)}
  return {**batch, "advantages": masked_whiten(returns, mask), "returns": returns}, metrics


def reinforce_pp_loss(hp: ReinforcePPConfig, outputs: Mapping[str, base.ModelOutputs],
                      batch: Mapping[str, jax.Array]):
  """PPO's clipped surrogate on the whitened per-token returns: GRPO's loss, whose
  ``per_token`` advantages ``prepare`` has replaced."""
  return grpo.grpo_loss(grpo.GRPOConfig(
      clip_eps=hp.clip_eps, kl_coef=hp.kl_coef, kl_estimator=hp.kl_estimator,
      entropy_coef=hp.entropy_coef, aggregation=hp.aggregation), outputs, batch)


OBJECTIVE = base.register(base.Objective(
    name="reinforce_pp", hparams=ReinforcePPConfig, loss_fn=reinforce_pp_loss,
    needs_reference=lambda hp: hp.kl_in_reward > 0 or hp.kl_coef > 0,
    prepare=reinforce_pp_prepare, advantage="none"))
