"""Pointwise verifiers: a scalar head trained to say whether a completion is right.

Binary cross-entropy of sigmoid(score) against 0/1 labels on prompt + completion rows (the
outcome-supervised verifier of Cobbe et al. 2021, "Training Verifiers to Solve Math Word
Problems"). Batch kind "scored": the labels come from wherever the phase or recipe has them,
such as a rule verifier's verdicts on the generator's own rollouts.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp

from rlalign.objectives import base


@dataclasses.dataclass(frozen=True)
class PointwiseConfig:
  positive_weight: float = 1.0  # weight of label-1 rows, for skewed label rates

  def validate(self, prefix: str = "objective") -> None:
    if not self.positive_weight > 0:
      raise ValueError(f"{prefix}.positive_weight must be positive, got {self.positive_weight}")


def pointwise_loss(hp: PointwiseConfig, outputs: Mapping[str, base.ModelOutputs],
                   batch: Mapping[str, jax.Array]):
  scores = outputs["model"].scores.astype(jnp.float32)
  labels = batch["labels"].astype(jnp.float32)
  weights = jnp.where(labels > 0.5, hp.positive_weight, 1.0)
  # -[y log s(x) + (1-y) log(1-s(x))], with log(1 - sigmoid(x)) = log_sigmoid(-x).
  bce = -(labels * jax.nn.log_sigmoid(scores) + (1 - labels) * jax.nn.log_sigmoid(-scores))
  loss = jnp.sum(weights * bce) / jnp.sum(weights)
  predicted = scores > 0
  positive = labels > 0.5
  rate = lambda hit, of: jnp.sum(hit & of) / jnp.maximum(jnp.sum(of), 1)
  metrics = {
      "bce": jnp.mean(bce),
      "accuracy": jnp.mean((predicted == positive).astype(jnp.float32)),
      # The mean of the true-positive and true-negative rates: 0.5 for a constant verdict,
      # however skewed the labels are.
      "balanced_accuracy": 0.5 * (rate(predicted, positive) + rate(~predicted, ~positive)),
      "label_rate": jnp.mean(labels),
      "score_mean": jnp.mean(scores),
  }
  return loss, metrics


OBJECTIVE = base.register(base.Objective(
    name="pointwise", hparams=PointwiseConfig, loss_fn=pointwise_loss, batch="scored",
    trains={"model": ("scores",)}))
