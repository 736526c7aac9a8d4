"""DPO: direct preference optimisation against a frozen reference (Rafailov et al. 2023).

For a preference pair (prompt x, chosen c, rejected r), with sequence log-probabilities summed
over each completion's masked tokens, the implicit rewards are

  r_c = beta (log pi(c|x) - log pi_ref(c|x)),   r_r = beta (log pi(r|x) - log pi_ref(r|x))

and the loss is -log sigma(r_c - r_r). ``label_smoothing`` eps > 0 is conservative DPO
(cDPO, Mitchell 2023): each label is taken to be flipped with probability eps, so the loss is
-(1 - eps) log sigma(r_c - r_r) - eps log sigma(r_r - r_c), whose optimum is a finite margin.

Metrics (means over pairs):

  reward_accuracy   [r_c > r_r]: the implicit reward ranks the pair right
  margin            r_c - r_r
  chosen_reward     r_c
  rejected_reward   r_r
  pref_accuracy     [log pi(c|x) > log pi(r|x)]: the policy's own preference, independent of
                    the reference (a before/after measure)
  chosen_logprob    log pi(c|x), rejected_logprob log pi(r|x)

Every minibatch keeps the pairs layout, chosen rows first (``rl/update.py`` shuffles pairs,
not rows), so :func:`base.split_pairs` finds each pair's halves. The per-pair losses and the
metrics' inputs come from :func:`dpo_terms`, which online DPO (``online_dpo.py``) shares.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp

from rlalign.objectives import base


@dataclasses.dataclass(frozen=True)
class DPOConfig:
  beta: float = 0.1             # inverse temperature of the implicit reward
  label_smoothing: float = 0.0  # cDPO's eps: the assumed probability that a label is flipped

  def validate(self, prefix: str = "objective") -> None:
    if not self.beta > 0:  # also rejects nan
      raise ValueError(f"{prefix}.beta must be positive, got {self.beta}")
    if not 0.0 <= self.label_smoothing < 0.5:
      raise ValueError(f"{prefix}.label_smoothing must be in [0, 0.5), got "
                       f"{self.label_smoothing}")


def dpo_terms(hp: DPOConfig, logprobs: jax.Array, ref_logprobs: jax.Array, mask: jax.Array
              ) -> Tuple[jax.Array, Dict[str, jax.Array]]:
  """Per-pair DPO losses [B] of a pairs-layout batch ([2B, T] per-token log-probs of the policy
  and the reference, chosen rows first), and the per-pair quantities the metrics average
  (see :func:`dpo_metrics`). Shared by ``dpo`` and ``online_dpo``."""
  logp = base.sequence_sum(logprobs, mask)
  ref_logp = base.sequence_sum(ref_logprobs, mask)
  chosen_logp, rejected_logp = base.split_pairs(logp)
  chosen_ref, rejected_ref = base.split_pairs(ref_logp)
  chosen_reward = hp.beta * (chosen_logp - chosen_ref)
  rejected_reward = hp.beta * (rejected_logp - rejected_ref)
  margin = chosen_reward - rejected_reward
  eps = hp.label_smoothing
  losses = -(1.0 - eps) * jax.nn.log_sigmoid(margin) - eps * jax.nn.log_sigmoid(-margin)
  terms = {"margin": margin, "chosen_reward": chosen_reward, "rejected_reward": rejected_reward,
           "chosen_logprob": chosen_logp, "rejected_logprob": rejected_logp}
  return losses, terms


def weighted_mean(x: jax.Array, weight: jax.Array) -> jax.Array:
  """sum(w x) / sum(w) over pairs, and 0 (with a zero gradient) when every weight is 0."""
  x, weight = x.astype(jnp.float32), weight.astype(jnp.float32)
  total = jnp.sum(weight)
  return jnp.where(total > 0, jnp.sum(x * weight) / jnp.where(total > 0, total, 1.0), 0.0)


def dpo_metrics(terms: Mapping[str, jax.Array],
                weight: Optional[jax.Array] = None) -> Dict[str, jax.Array]:
  """The module docstring's metrics from :func:`dpo_terms`' per-pair quantities: plain means
  over pairs, or with ``weight`` [B] means weighted by it (0 when every weight is 0)."""
  if weight is None:
    mean = lambda x: jnp.mean(x.astype(jnp.float32))
  else:
    mean = lambda x: weighted_mean(x, weight)
  return {
      "reward_accuracy": mean(terms["margin"] > 0),
      "margin": mean(terms["margin"]),
      "chosen_reward": mean(terms["chosen_reward"]),
      "rejected_reward": mean(terms["rejected_reward"]),
      "pref_accuracy": mean(terms["chosen_logprob"] > terms["rejected_logprob"]),
      "chosen_logprob": mean(terms["chosen_logprob"]),
      "rejected_logprob": mean(terms["rejected_logprob"]),
  }


def dpo_loss(hp: DPOConfig, outputs: Mapping[str, base.ModelOutputs],
             batch: Mapping[str, jax.Array]):
  losses, terms = dpo_terms(hp, outputs["policy"].logprobs, batch["ref_logprobs"],
                            batch["mask"])
  return jnp.mean(losses), dpo_metrics(terms)


OBJECTIVE = base.register(base.Objective(
    name="dpo", hparams=DPOConfig, loss_fn=dpo_loss, batch="pairs",
    trains={"policy": ("logprobs",)}, needs_reference=lambda hp: True))
