"""IPO: identity preference optimisation against a frozen reference (Azar et al. 2023, "A
General Theoretical Paradigm to Understand Learning from Human Preferences").

For a preference pair (prompt x, chosen c, rejected r), with sequence log-probabilities summed
over each completion's masked tokens, the log-ratio margin is

  h = (log pi(c|x) - log pi_ref(c|x)) - (log pi(r|x) - log pi_ref(r|x))

and the loss is the squared regression of h onto a fixed target

  (h - 1/(2 tau))^2

Unlike DPO's -log sigma, which keeps pushing h up on pairs it already ranks right (so the
policy drifts arbitrarily far from the reference on deterministic preferences), IPO's optimum
is the finite margin 1/(2 tau): ``tau`` is the strength of the pull towards the reference.

``length_normalized`` divides each sequence's log-ratio by its completion's token count
before taking the difference, h = lr(c)/|c| - lr(r)/|r|. The paper does not describe this;
it is the form TRL's DPO trainer uses for IPO, which its authors say they confirmed with the
IPO authors (the paper's reported results correspond to the normalised form). With summed
log-ratios the squared loss scales with completion length, so ``tau`` means different things
for different lengths; normalised, it is comparable across them.

Metrics (means over pairs), with lr(y) = log pi(y|x) - log pi_ref(y|x), length-normalised when
``length_normalized`` is set:

  reward_accuracy   [h > 0]: the implicit reward ranks the pair right
  margin            h
  chosen_reward     lr(c), rejected_reward lr(r): IPO's implicit rewards (no beta; tau only
                    sets the target margin)
  pref_accuracy     [log pi(c|x) > log pi(r|x)]: the policy's own preference, independent of
                    the reference (sequence sums, as DPO's)
  chosen_logprob    log pi(c|x), rejected_logprob log pi(r|x) (sequence sums)

Every minibatch keeps the pairs layout, chosen rows first, so :func:`base.split_pairs` finds
each pair's halves.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp

from rlalign.objectives import base, dpo


@dataclasses.dataclass(frozen=True)
class IPOConfig:
  tau: float = 0.1                # the paper's regularisation strength; target margin 1/(2 tau)
  length_normalized: bool = False  # divide each log-ratio by its token count (TRL's IPO)

  def validate(self, prefix: str = "objective") -> None:
    if not self.tau > 0:  # also rejects nan
      raise ValueError(f"{prefix}.tau must be positive, got {self.tau}")


def ipo_loss(hp: IPOConfig, outputs: Mapping[str, base.ModelOutputs],
             batch: Mapping[str, jax.Array]):
  mask = batch["mask"]
  logp = base.sequence_sum(outputs["policy"].logprobs.astype(jnp.float32), mask)
  ref_logp = base.sequence_sum(batch["ref_logprobs"].astype(jnp.float32), mask)
  log_ratio = logp - ref_logp
  if hp.length_normalized:
    log_ratio = log_ratio / jnp.maximum(jnp.sum(mask, axis=-1).astype(jnp.float32), 1.0)
  chosen_logp, rejected_logp = base.split_pairs(logp)
  chosen_reward, rejected_reward = base.split_pairs(log_ratio)
  margin = chosen_reward - rejected_reward
  losses = jnp.square(margin - 1.0 / (2.0 * hp.tau))
  terms = {"margin": margin, "chosen_reward": chosen_reward, "rejected_reward": rejected_reward,
           "chosen_logprob": chosen_logp, "rejected_logprob": rejected_logp}
  return jnp.mean(losses), dpo.dpo_metrics(terms)


OBJECTIVE = base.register(base.Objective(
    name="ipo", hparams=IPOConfig, loss_fn=ipo_loss, batch="pairs",
    trains={"policy": ("logprobs",)}, needs_reference=lambda hp: True))
