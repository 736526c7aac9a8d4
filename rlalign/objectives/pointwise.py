"""Pointwise verifiers: a scalar head trained to say whether a completion is right.

Binary cross-entropy of sigmoid(score) against 0/1 labels on prompt + completion rows (the
outcome-supervised verifier of Cobbe et al. 2021, "Training Verifiers to Solve Math Word
Problems"). Batch kind "scored": the labels come from wherever the phase or recipe has them,
such as a rule verifier's verdicts on the generator's own rollouts. An optional
``label_mask`` [B] keeps only the rows that have a label (a recipe's rollouts of labelled
prompts); the others carry no loss and count in no metric.
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
  # Weigh the two classes equally in each batch, whatever their counts (a verifier trained on
  # a strong generator's samples, nearly all right, otherwise learns to pass everything).
  balanced: bool = False

  def validate(self, prefix: str = "objective") -> None:
    if not self.positive_weight > 0:
      raise ValueError(f"{prefix}.positive_weight must be positive, got {self.positive_weight}")


def pointwise_loss(hp: PointwiseConfig, outputs: Mapping[str, base.ModelOutputs],
                   batch: Mapping[str, jax.Array]):
  scores = outputs["model"].scores.astype(jnp.float32)
  labels = batch["labels"].astype(jnp.float32)
  valid = (batch["label_mask"].astype(bool) if "label_mask" in batch
           else jnp.ones(labels.shape, bool))
  weights = jnp.where(labels > 0.5, hp.positive_weight, 1.0) * valid
  if hp.balanced:
    positive = (labels > 0.5) & valid
    negative = (labels <= 0.5) & valid
    count = lambda m: jnp.maximum(jnp.sum(m), 1)
    weights = jnp.where(positive, 1.0 / count(positive), 0.0) + jnp.where(
        negative, 1.0 / count(negative), 0.0)
    weights = weights * jnp.where(labels > 0.5, hp.positive_weight, 1.0)
  # -[y log s(x) + (1-y) log(1-s(x))], with log(1 - sigmoid(x)) = log_sigmoid(-x).
  bce = -(labels * jax.nn.log_sigmoid(scores) + (1 - labels) * jax.nn.log_sigmoid(-scores))
  loss = jnp.sum(weights * bce) / jnp.maximum(jnp.sum(weights), 1e-6)
  metrics = verdict_metrics(scores > 0, labels > 0.5, valid)
  n = jnp.maximum(jnp.sum(valid), 1)
  metrics.update({
      "bce": jnp.sum(bce * valid) / n,
      "label_rate": jnp.sum(labels * valid) / n,
      "score_mean": jnp.sum(scores * valid) / n,
  })
  return loss, metrics


def verdict_metrics(predicted: jax.Array, positive: jax.Array, valid: jax.Array):
  """A verifier's verdicts against the truth, over the ``valid`` rows: accuracy, balanced
  accuracy (the mean of the true-positive and true-negative rates: 0.5 for a constant
  verdict, however skewed the labels are) and the false-positive rate, the share of wrong
  completions it passes (where a policy trained on its verdicts finds reward to hack)."""
  rate = lambda hit, of: jnp.sum(hit & of & valid) / jnp.maximum(jnp.sum(of & valid), 1)
  n = jnp.maximum(jnp.sum(valid), 1)
  return {
      "accuracy": jnp.sum((predicted == positive) & valid) / n,
      "balanced_accuracy": 0.5 * (rate(predicted, positive) + rate(~predicted, ~positive)),
      "false_positive_rate": rate(predicted, ~positive),
      "true_positive_rate": rate(predicted, positive),
  }


OBJECTIVE = base.register(base.Objective(
    name="pointwise", hparams=PointwiseConfig, loss_fn=pointwise_loss, batch="scored",
    trains={"model": ("scores",)}))
