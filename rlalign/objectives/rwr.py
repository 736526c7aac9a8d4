"""Reward-weighted regression (Peters & Schaal 2007, "Reinforcement Learning by
Reward-Weighted Regression for Operational Space Control"; as RISE uses it, Qu et al. 2024,
"Recursive Introspection: Teaching Language Model Agents How to Self-Improve").

Supervised learning on the policy's samples, each weighted by its exponentiated reward::

  w_i  = exp(r_i / tau) / sum_j exp(r_j / tau)
  loss = -sum_i w_i 1/|y_i| sum_t log pi(y_it)

The softmax runs over the batch the loss sees, across prompts and not within each group: the
whole rollout batch with ``rl.minibatches=1``, else each minibatch. A small ``tau`` puts the
weight on the batch's best samples (tau -> 0 is supervised learning on the best one), a large
one spreads it evenly. The weights are constants (rewards carry no gradient); advantages, pi_old
and the reference are ignored (the phase's default estimator is "none", the rewards unused).
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp

from rlalign.objectives import base


@dataclasses.dataclass(frozen=True)
class RWRConfig:
  tau: float = 1.0  # temperature of the reward softmax

  def validate(self, prefix: str = "objective") -> None:
    if not self.tau > 0:
      raise ValueError(f"{prefix}.tau must be positive, got {self.tau}")


def rwr_loss(hp: RWRConfig, outputs: Mapping[str, base.ModelOutputs],
             batch: Mapping[str, jax.Array]):
  policy = outputs["policy"]
  mask = batch["mask"].astype(bool)
  # Rows without a token (a dynamic-sampling filler, a turn a RISE rollout did not take) get
  # no weight: the softmax runs over the others.
  has_tokens = jnp.any(mask, axis=1)
  logits = jnp.where(has_tokens, batch["rewards"].astype(jnp.float32) / hp.tau, -jnp.inf)
  weights = jax.lax.stop_gradient(jnp.where(
      has_tokens, jax.nn.softmax(jnp.where(jnp.any(has_tokens), logits, 0.0)), 0.0))
  nll = base.masked_row_mean(-jnp.where(mask, policy.logprobs, 0.0), mask)  # [B]
  loss = jnp.sum(weights * nll)
  metrics = {
      "nll": base.aggregate(-jnp.where(mask, policy.logprobs, 0.0), mask, "token"),
      "weight_max": jnp.max(weights),
      # Kish's effective sample size 1 / sum w^2, as a fraction of the rows: 1 is uniform.
      "effective_sample_fraction": 1.0 / (jnp.sum(jnp.square(weights))
                                          * jnp.maximum(jnp.sum(has_tokens), 1)),
  }
  return loss, metrics


OBJECTIVE = base.register(base.Objective(
    name="rwr", hparams=RWRConfig, loss_fn=rwr_loss, trains={"policy": ("logprobs",)},
    advantage="none"))
