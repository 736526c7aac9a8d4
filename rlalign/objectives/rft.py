"""Rejection-sampling fine-tuning: supervised learning on the policy's own good samples
(STaR, Zelikman et al. 2022, "STaR: Bootstrapping Reasoning With Reasoning"; RFT, Yuan et al.
2023, "Scaling Relationship on Learning Mathematical Reasoning with Large Language Models").

Of a rollouts batch, the rows whose reward reaches ``threshold`` are kept, and the loss is the
token-mean negative log-likelihood over the kept rows' tokens::

  loss = -sum_{i: r_i >= threshold} sum_t log pi(y_it) / sum_{i: r_i >= threshold} |y_i|

0 (with a zero gradient) when no row of the minibatch is kept. Advantages, pi_old and the
reference are ignored; with a 0/1 correctness reward the default threshold keeps the correct
answers. The phase's default advantage estimator is "none" (the rewards, unused).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping

import jax
import jax.numpy as jnp

from rlalign.objectives import base


@dataclasses.dataclass(frozen=True)
class RFTConfig:
  threshold: float = 1.0  # keep rows whose reward is >= threshold

  def validate(self, prefix: str = "objective") -> None:
    if not isinstance(self.threshold, (int, float)) or math.isnan(self.threshold):
      raise ValueError(f"{prefix}.threshold must be a number, got {self.threshold!r}")


def rft_loss(hp: RFTConfig, outputs: Mapping[str, base.ModelOutputs],
             batch: Mapping[str, jax.Array]):
  policy = outputs["policy"]
  keep = batch["rewards"] >= hp.threshold
  kept_mask = batch["mask"].astype(bool) & keep[:, None]
  nll = base.aggregate(-jnp.where(kept_mask, policy.logprobs, 0.0), kept_mask, "token")
  return nll, {"nll": nll, "kept_fraction": jnp.mean(keep.astype(jnp.float32))}


OBJECTIVE = base.register(base.Objective(
    name="rft", hparams=RFTConfig, loss_fn=rft_loss, trains={"policy": ("logprobs",)},
    advantage="none"))
