"""KTO: Kahneman-Tversky optimisation on unpaired feedback (Ethayarajh et al. 2024, "KTO: Model
Alignment as Prospect Theoretic Optimization").

Each row is a prompt x and a completion y labelled desirable (``labels`` 1) or undesirable
(0); no pairing is needed. With the sequence log-ratio against a frozen reference, summed over
the completion's masked tokens,

  r(y) = log pi(y|x) - log pi_ref(y|x)

and a reference point z0 (an estimate of KL(pi || pi_ref)), the value of a row is
sigma(beta (r - z0)) if desirable and sigma(beta (z0 - r)) if undesirable, and the loss is a
mean over rows of

  lambda_D (1 - sigma(beta (r - z0)))    desirable rows
  lambda_U (1 - sigma(beta (z0 - r)))    undesirable rows

(``desirable_weight``, ``undesirable_weight``; the paper suggests lambda_D n_D / (lambda_U n_U)
in [1, 4/3] for n_D desirable and n_U undesirable examples).

The reference point: z0 = max(0, mean over the minibatch's rows of r), under stop_gradient (it
is a baseline, not something to optimise). The paper and TRL's KTOTrainer estimate it from
mismatched pairs instead, each prompt with another row's completion, which needs an extra
forward pass of policy and reference on those sequences; this objective estimates it from the
batch's own (matched) rows, which needs none. The matched estimate is biased towards the
rows' own rewards (it is the mean of the very r it centres), so a batch all of one label
pulls z0 towards that label's rewards; batches that mix labels keep it closer to the KL.

Metrics:

  kl                  z0
  desirable_reward    mean of beta r over the desirable rows (0 when there are none)
  undesirable_reward  mean of beta r over the undesirable rows (0 when there are none)
  reward_accuracy     fraction of rows whose r - z0 has the label's sign (> 0 for desirable,
                      < 0 for undesirable)
  desirable_rate      fraction of desirable rows
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp

from rlalign.objectives import base


@dataclasses.dataclass(frozen=True)
class KTOConfig:
  beta: float = 0.1                # inverse temperature of the implicit reward
  desirable_weight: float = 1.0    # lambda_D
  undesirable_weight: float = 1.0  # lambda_U

  def validate(self, prefix: str = "objective") -> None:
    if not self.beta > 0:  # also rejects nan
      raise ValueError(f"{prefix}.beta must be positive, got {self.beta}")
    for name in ("desirable_weight", "undesirable_weight"):
      value = getattr(self, name)
      if not value > 0:
        raise ValueError(f"{prefix}.{name} must be positive, got {value}")


def kto_loss(hp: KTOConfig, outputs: Mapping[str, base.ModelOutputs],
             batch: Mapping[str, jax.Array]):
  mask = batch["mask"]
  logp = base.sequence_sum(outputs["policy"].logprobs.astype(jnp.float32), mask)
  ref_logp = base.sequence_sum(batch["ref_logprobs"].astype(jnp.float32), mask)
  r = logp - ref_logp
  # A row without a completion (a dataset mixing unpaired answers with other records) is not
  # an example: it counts in no mean.
  real = jnp.any(mask, axis=-1).astype(jnp.float32)
  mean_over = lambda x, w: jnp.sum(x * w) / jnp.maximum(jnp.sum(w), 1.0)
  z0 = jax.lax.stop_gradient(jnp.maximum(mean_over(r, real), 0.0))
  desirable = batch["labels"] > 0.5
  losses = jnp.where(desirable,
                     hp.desirable_weight * (1.0 - jax.nn.sigmoid(hp.beta * (r - z0))),
                     hp.undesirable_weight * (1.0 - jax.nn.sigmoid(hp.beta * (z0 - r))))
  d = desirable.astype(jnp.float32) * real
  right = jnp.where(desirable, r > z0, r < z0)
  metrics = {
      "kl": z0,
      "desirable_reward": mean_over(hp.beta * r, d),
      "undesirable_reward": mean_over(hp.beta * r, real - d),
      "reward_accuracy": mean_over(right.astype(jnp.float32), real),
      "desirable_rate": mean_over(d, real),
  }
  return mean_over(losses, real), metrics


OBJECTIVE = base.register(base.Objective(
    name="kto", hparams=KTOConfig, loss_fn=kto_loss, batch="scored",
    trains={"policy": ("logprobs",)}, needs_reference=lambda hp: True))
