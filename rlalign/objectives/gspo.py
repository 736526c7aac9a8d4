"""GSPO: group sequence policy optimisation (Zheng et al. 2025, "Group Sequence Policy
Optimization").

The importance ratio is the sequence's, length-normalised, and the clip acts on it::

  s_i = (pi_theta(y_i | x) / pi_old(y_i | x))^(1/|y_i|)
      = exp(1/|y_i| sum_t (log pi_theta(y_it) - log pi_old(y_it)))
  loss = 1/B sum_i -min(s_i A_i, clip(s_i, 1 - eps_low, 1 + eps_high) A_i)
         + beta KL - c_ent H

so every token of a sequence shares one ratio and one clip decision; A_i is the sequence's
advantage ([B]; GRPO's group-normalised reward by default). The paper's clip range is far
narrower than GRPO's per-token one, eps_low = 3e-4 and eps_high = 4e-4, since s_i averages
the log-ratios. The gradient of an unclipped sequence is -A_i s_i 1/|y_i| sum_t grad log
pi_theta(y_it). The KL (``kl_coef``, k3 by default, as GRPO) and the entropy bonus are
averaged per sequence, then over sequences, like the surrogate.

``tis_cap`` > 0 multiplies each sequence's surrogate by a truncated importance weight at the
same level as s_i: min(exp(1/|y_i| sum_t (log pi_old - log pi_sampler)), tis_cap) (Yao et al.
2025's TIS, length-normalised like the ratio, rather than ``base.tis_weights`` per token). It
differs from 1 only with the phase's ``rescore_old_logprobs=True``.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp

from rlalign.objectives import base, kl
from rlalign.objectives.grpo import clipped_surrogate


@dataclasses.dataclass(frozen=True)
class GSPOConfig:
  clip_eps: float = 3e-4       # the sequence ratio's lower clip, 1 - clip_eps
  clip_eps_high: float = 4e-4  # its upper clip, 1 + clip_eps_high
  kl_coef: float = 0.0
  kl_estimator: str = "k3"
  entropy_coef: float = 0.0
  tis_cap: float = 0.0         # sequence-level truncated importance sampling cap; 0: off

  def validate(self, prefix: str = "objective") -> None:
    for name in ("clip_eps", "clip_eps_high"):
      value = getattr(self, name)
      if not value > 0:
        raise ValueError(f"{prefix}.{name} must be positive, got {value}")
    base.check_tis_cap(prefix, self.tis_cap)
    for name in ("kl_coef",):
      value = getattr(self, name)
      if not value >= 0:
        raise ValueError(f"{prefix}.{name} must be >= 0, got {value}")
    if not self.entropy_coef == self.entropy_coef:
      raise ValueError(f"{prefix}.entropy_coef must be a number, got {self.entropy_coef}")
    base.check_choice(prefix, "kl_estimator", self.kl_estimator, kl.ESTIMATORS)


def sequence_log_ratio(logprobs: jax.Array, old_logprobs: jax.Array,
                       mask: jax.Array) -> jax.Array:
  """log s_i, [B]: the mean over each row's real tokens of log pi - log pi_old (0 if none)."""
  return base.masked_row_mean(jnp.where(mask, logprobs - old_logprobs, 0.0), mask)


def gspo_loss(hp: GSPOConfig, outputs: Mapping[str, base.ModelOutputs],
              batch: Mapping[str, jax.Array]):
  policy = outputs["policy"]
  mask = batch["mask"].astype(bool)
  advantages = batch["advantages"]
  if advantages.ndim != 1:
    raise ValueError(f"GSPO needs one advantage per sequence, [B]; got shape "
                     f"{advantages.shape} (a per-token estimator?)")
  pg, was_clipped = clipped_surrogate(
      sequence_log_ratio(policy.logprobs, batch["old_logprobs"], mask),
      advantages.astype(jnp.float32), hp.clip_eps, hp.clip_eps_high)
  metrics = {}
  if hp.tis_cap:
    weights = jax.lax.stop_gradient(jnp.minimum(jnp.exp(sequence_log_ratio(
        batch["old_logprobs"], batch["sampler_logprobs"], mask)), hp.tis_cap))
    pg = weights * pg
    metrics["tis_weight_mean"] = jnp.mean(weights)
  loss = jnp.mean(pg)
  kl_tokens = kl.estimate(hp.kl_estimator, policy.logprobs, batch["ref_logprobs"])
  if hp.kl_coef:
    loss = loss + hp.kl_coef * base.aggregate(kl_tokens, mask, "sequence")
  if hp.entropy_coef:
    loss = loss - hp.entropy_coef * base.aggregate(policy.entropy, mask, "sequence")
  mean = lambda x: base.aggregate(x.astype(jnp.float32), mask, "token")
  metrics.update({
      "pg_loss": jnp.mean(pg),
      "kl": mean(kl_tokens),
      "entropy": mean(policy.entropy),
      "clip_frac": jnp.mean(was_clipped.astype(jnp.float32)),  # of sequences
  })
  return loss, metrics


OBJECTIVE = base.register(base.Objective(
    name="gspo", hparams=GSPOConfig, loss_fn=gspo_loss,
    needs_reference=lambda hp: hp.kl_coef > 0, advantage="group_norm"))
