"""PPO with a learned critic and GAE (Schulman et al. 2017, "Proximal Policy Optimization
Algorithms"; Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized
Advantage Estimation").

Each completion is an episode whose actions are its tokens. ``prepare`` runs once per
iteration: it scores the critic's values V(s_t) before every completion token (params as they
sampled), builds per-token rewards, the row's sequence reward at its last real token plus,
with ``kl_in_reward``, -beta (log pi_old - log pi_ref) at every token (the RLHF recipe of
Ziegler et al. 2019 / Ouyang et al. 2022), and turns them into per-token GAE advantages and
lambda-returns (``advantages.gae``), whitened over the batch's real tokens by default.

The loss, per token and aggregated like GRPO's (``base.aggregate``)::

  clipped surrogate(rho, A)  +  vf_coef 0.5 max((V - R)^2, (clip(V, V_old +- c) - R)^2)
                             -  entropy_coef H  +  kl_coef KL(pi || pi_ref)

The policy and the critic are separate roles, each with its own optimizer, updated in the
same gradient step; the value term reaches only the critic and the others only the policy,
so with Adam ``vf_coef`` mostly matters through gradient clipping.

``tis_cap`` > 0 multiplies the clipped surrogate per token by the truncated importance weight
min(pi_old/pi_sampler, tis_cap) (``base.tis_weights``; Yao et al. 2025), which differs from 1
only with the phase's ``rescore_old_logprobs=True`` (pi_old recomputed by the learner).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import jax
import jax.numpy as jnp

from rlalign.objectives import advantages as adv_lib
from rlalign.objectives import base, kl
from rlalign.objectives.grpo import clipped_surrogate


@dataclasses.dataclass(frozen=True)
class PPOConfig:
  gamma: float = 1.0          # discount over completion tokens; 1 suits episodic answers
  lam: float = 0.95           # GAE lambda: 0 is one-step TD, 1 is Monte Carlo minus V
  clip_eps: float = 0.2       # policy ratio clip
  vf_clip: float = 0.2        # value clip around the old values; 0 disables
  vf_coef: float = 0.5
  entropy_coef: float = 0.0
  kl_in_reward: float = 0.0   # beta of the per-token reward -beta (log pi_old - log pi_ref)
  kl_coef: float = 0.0        # KL(pi || pi_ref) in the loss, with kl_estimator, as GRPO
  kl_estimator: str = "k3"
  whiten_advantages: bool = True  # over the batch's real tokens, in prepare
  aggregation: str = "token"  # "token", "sequence" or "constant" (the mask's width)
  tis_cap: float = 0.0        # truncated importance sampling cap; 0 turns it off

  def validate(self, prefix: str = "objective") -> None:
    for name in ("gamma", "lam"):
      value = getattr(self, name)
      if not 0.0 <= value <= 1.0:
        raise ValueError(f"{prefix}.{name} must be in [0, 1], got {value}")
    if not self.clip_eps > 0:
      raise ValueError(f"{prefix}.clip_eps must be positive, got {self.clip_eps}")
    base.check_tis_cap(prefix, self.tis_cap)
    for name in ("vf_clip", "vf_coef", "kl_in_reward", "kl_coef"):
      value = getattr(self, name)
      if not value >= 0:
        raise ValueError(f"{prefix}.{name} must be >= 0, got {value}")
    base.check_choice(prefix, "kl_estimator", self.kl_estimator, kl.ESTIMATORS)
    base.check_choice(prefix, "aggregation", self.aggregation, base.AGGREGATIONS)


def token_rewards(hp: PPOConfig, batch: Mapping[str, jax.Array]) -> jax.Array:
  """[B, T]: the sequence reward at each row's last real token, plus the KL penalty per token
  (``kl_in_reward``); 0 at masked positions. A row with no real token has no reward."""
  mask = batch["mask"].astype(bool)
  T = mask.shape[1]
  last = jnp.max(jnp.where(mask, jnp.arange(T), -1), axis=1)  # -1 when the row is empty
  at_last = jnp.arange(T)[None, :] == last[:, None]
  rewards = jnp.where(at_last, batch["rewards"].astype(jnp.float32)[:, None], 0.0)
  if hp.kl_in_reward:
    rewards = rewards - hp.kl_in_reward * (batch["old_logprobs"] - batch["ref_logprobs"])
  return jnp.where(mask, rewards, 0.0)


def masked_whiten(x: jax.Array, mask: jax.Array, eps: float = 1e-8) -> jax.Array:
  """(x - mean) / std over the masked entries (population std); 0 elsewhere."""
  m = mask.astype(jnp.float32)
  n = jnp.maximum(jnp.sum(m), 1.0)
  mean = jnp.sum(x * m) / n
  var = jnp.sum(jnp.square(x - mean) * m) / n
  return (x - mean) * jax.lax.rsqrt(var + eps) * m


def ppo_prepare(hp: PPOConfig, batch: Mapping[str, jax.Array],
                score: Callable[[str, tuple], base.ModelOutputs], group_size: int = 1):
  """The critic's old values, per-token GAE advantages and returns, into the batch."""
  del group_size  # each row is its own episode
  mask = batch["mask"]
  old_values = score("critic", ("values",)).values * mask.astype(jnp.float32)
  advantages, returns = adv_lib.gae(token_rewards(hp, batch), old_values, mask, hp.gamma,
                                    hp.lam)
  if hp.whiten_advantages:
    advantages = masked_whiten(advantages, mask)
  return {**batch, "advantages": advantages, "returns": returns, "old_values": old_values}


def value_loss(values: jax.Array, old_values: jax.Array, returns: jax.Array, vf_clip: float):
  """Per-token 0.5 max((V - R)^2, (clip(V, V_old +- c) - R)^2), and where the clipped branch
  is the larger (its gradient is then 0). ``vf_clip`` 0: the plain 0.5 (V - R)^2."""
  unclipped = jnp.square(values - returns)
  if not vf_clip:
    return 0.5 * unclipped, jnp.zeros(values.shape, bool)
  clipped_values = old_values + jnp.clip(values - old_values, -vf_clip, vf_clip)
  clipped = jnp.square(clipped_values - returns)
  return 0.5 * jnp.maximum(unclipped, clipped), clipped > unclipped


def ppo_loss(hp: PPOConfig, outputs: Mapping[str, base.ModelOutputs],
             batch: Mapping[str, jax.Array]):
  policy, critic = outputs["policy"], outputs["critic"]
  mask = batch["mask"]
  advantages = base.per_token(batch["advantages"])
  pg, was_clipped = clipped_surrogate(policy.logprobs - batch["old_logprobs"], advantages,
                                      hp.clip_eps, hp.clip_eps)
  if hp.tis_cap:
    tis = base.tis_weights(batch, hp.tis_cap)
    pg = tis * pg
  vf, vf_clipped = value_loss(critic.values, batch["old_values"], batch["returns"], hp.vf_clip)
  kl_tokens = kl.estimate(hp.kl_estimator, policy.logprobs, batch["ref_logprobs"])
  per_token = pg + hp.vf_coef * vf - hp.entropy_coef * policy.entropy
  if hp.kl_coef:
    per_token = per_token + hp.kl_coef * kl_tokens
  loss = base.aggregate(per_token, mask, hp.aggregation)

  mean = lambda x: base.aggregate(x.astype(jnp.float32), mask, "token")
  returns = batch["returns"]
  residual_var = mean(jnp.square((returns - critic.values) - mean(returns - critic.values)))
  return_var = mean(jnp.square(returns - mean(returns)))
  metrics = {
      "pg_loss": mean(pg),
      "vf_loss": mean(vf),
      "vf_clip_frac": mean(vf_clipped),
      "clip_frac": mean(was_clipped),
      "kl": mean(kl_tokens),
      "entropy": mean(policy.entropy),
      "value_mean": mean(critic.values),
      "return_mean": mean(returns),
      # 1 - Var[R - V] / Var[R] over the minibatch's tokens: 1 is a perfect critic, 0 one no
      # better than a constant (and 0 when the returns are all equal).
      "explained_variance": jnp.where(return_var > 0,
                                      1.0 - residual_var / jnp.maximum(return_var, 1e-12), 0.0),
  }
  if hp.tis_cap:
    metrics["tis_weight_mean"] = mean(tis)
  return loss, metrics


OBJECTIVE = base.register(base.Objective(
    name="ppo", hparams=PPOConfig, loss_fn=ppo_loss, batch="rollouts",
    trains={"policy": ("logprobs", "entropy"), "critic": ("values",)}, advantage="none",
    needs_reference=lambda hp: hp.kl_coef > 0 or hp.kl_in_reward > 0,
    prepare=ppo_prepare))
