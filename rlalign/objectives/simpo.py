"""SimPO: simple preference optimisation with a reference-free reward (Meng et al. 2024,
"SimPO: Simple Preference Optimization with a Reference-Free Reward").

The implicit reward of a completion y is its length-normalised log-likelihood under the
policy alone, r(y) = beta/|y| log pi(y|x), with |y| the completion's masked token count and
log pi(y|x) summed over those tokens. For a pair (chosen c, rejected r) the loss asks the
reward gap to exceed a target margin gamma:

  -log sigma(r(c) - r(r) - gamma)

No reference model is needed. ``label_smoothing`` eps > 0 is the conservative form, as cDPO
(Mitchell 2023): with m = r(c) - r(r) - gamma the loss is
-(1 - eps) log sigma(m) - eps log sigma(-m).

Parametrisation of the margin: ``gamma`` here is the paper's gamma, on the scale of
the beta-scaled rewards. The SimPO authors' released training configs set it through the ratio
gamma/beta instead (``gamma_beta_ratio``), so their (beta=2.0, gamma_beta_ratio=0.5) is
(beta=2.0, gamma=1.0) here. TRL's CPOTrainer (loss_type="simpo") takes gamma itself as
``simpo_gamma``; its code forms gamma/beta internally and subtracts that from the unscaled
average log-prob gap before multiplying by beta, which is the same loss.

Metrics (means over pairs):

  reward_accuracy   [r(c) > r(r)]: the length-normalised reward ranks the pair right
  margin            r(c) - r(r) (without gamma)
  chosen_reward     r(c), rejected_reward r(r)
  pref_accuracy     [log pi(c|x) > log pi(r|x)]: the preference of the summed (unnormalised)
                    log-likelihoods, comparable with DPO's
  chosen_logprob    log pi(c|x), rejected_logprob log pi(r|x) (sequence sums)

Every minibatch keeps the pairs layout, chosen rows first, so :func:`base.split_pairs` finds
each pair's halves.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping

import jax
import jax.numpy as jnp

from rlalign.objectives import base, dpo


@dataclasses.dataclass(frozen=True)
class SimPOConfig:
  beta: float = 2.0             # scale of the length-normalised reward
  gamma: float = 0.5            # target reward margin (the paper's gamma, not gamma/beta)
  label_smoothing: float = 0.0  # the assumed probability that a label is flipped, as cDPO

  def validate(self, prefix: str = "objective") -> None:
    if not self.beta > 0:  # also rejects nan
      raise ValueError(f"{prefix}.beta must be positive, got {self.beta}")
    if not 0.0 <= self.gamma < math.inf:
      raise ValueError(f"{prefix}.gamma must be a finite value >= 0, got {self.gamma}")
    if not 0.0 <= self.label_smoothing < 0.5:
      raise ValueError(f"{prefix}.label_smoothing must be in [0, 0.5), got "
                       f"{self.label_smoothing}")


def simpo_loss(hp: SimPOConfig, outputs: Mapping[str, base.ModelOutputs],
               batch: Mapping[str, jax.Array]):
  mask = batch["mask"]
  logp = base.sequence_sum(outputs["policy"].logprobs.astype(jnp.float32), mask)
  lengths = jnp.maximum(jnp.sum(mask, axis=-1).astype(jnp.float32), 1.0)
  reward = hp.beta * logp / lengths
  chosen_logp, rejected_logp = base.split_pairs(logp)
  chosen_reward, rejected_reward = base.split_pairs(reward)
  margin = chosen_reward - rejected_reward
  logits = margin - hp.gamma
  eps = hp.label_smoothing
  losses = -(1.0 - eps) * jax.nn.log_sigmoid(logits) - eps * jax.nn.log_sigmoid(-logits)
  terms = {"margin": margin, "chosen_reward": chosen_reward, "rejected_reward": rejected_reward,
           "chosen_logprob": chosen_logp, "rejected_logprob": rejected_logp}
  return jnp.mean(losses), dpo.dpo_metrics(terms)


OBJECTIVE = base.register(base.Objective(
    name="simpo", hparams=SimPOConfig, loss_fn=simpo_loss, batch="pairs",
    trains={"policy": ("logprobs",)}))
