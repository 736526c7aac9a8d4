"""Process reward models: a scalar head trained to say whether each step so far is right.

Binary cross-entropy of sigmoid(step score) against each step's label, at the step's last
token (Lightman et al. 2023, "Let's verify step by step"; with Monte-Carlo labels, Wang et al.
2024, "Math-Shepherd"). Batch kind "scored" with ``step_labels`` [B, N]: a label in [0, 1] at
each step's last completion token and -1 everywhere else. They come from a dataset's
``step_labels`` (``data/pipeline.py``: a completion and one label per step), or from rollouts
of the policy (``rewards.process.monte_carlo_step_labels``, the alternating recipe). Soft
labels train as well as hard ones: the loss is the cross-entropy to the label's Bernoulli.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp

from rlalign.objectives import base


@dataclasses.dataclass(frozen=True)
class PRMConfig:
  positive_weight: float = 1.0  # weight of steps labelled good (label > 0.5)

  def validate(self, prefix: str = "objective") -> None:
    if not self.positive_weight > 0:
      raise ValueError(f"{prefix}.positive_weight must be positive, got {self.positive_weight}")


def prm_loss(hp: PRMConfig, outputs: Mapping[str, base.ModelOutputs],
             batch: Mapping[str, jax.Array]):
  scores = outputs["model"].step_scores.astype(jnp.float32)
  if "step_labels" not in batch:
    raise ValueError("prm trains on per-step labels (batch['step_labels']); this batch has "
                     f"only {sorted(batch)}")
  labels = batch["step_labels"].astype(jnp.float32)
  if labels.shape != scores.shape:
    raise ValueError(f"prm trains on per-step labels [B, N] like the completions "
                     f"{scores.shape}, got step_labels of shape {labels.shape}")
  steps = (labels >= 0) & batch["mask"].astype(bool)
  y = jnp.clip(labels, 0.0, 1.0)
  weights = jnp.where(y > 0.5, hp.positive_weight, 1.0) * steps
  bce = -(y * jax.nn.log_sigmoid(scores) + (1 - y) * jax.nn.log_sigmoid(-scores))
  loss = jnp.sum(weights * bce) / jnp.maximum(jnp.sum(weights), 1e-6)
  n = jnp.maximum(jnp.sum(steps), 1)
  agree = ((scores > 0) == (y > 0.5)) & steps
  return loss, {
      "bce": jnp.sum(bce * steps) / n,
      "step_accuracy": jnp.sum(agree) / n,
      "steps_per_row": jnp.sum(steps) / steps.shape[0],
      "label_rate": jnp.sum(y * steps) / n,
  }


OBJECTIVE = base.register(base.Objective(
    name="prm", hparams=PRMConfig, loss_fn=prm_loss, batch="scored",
    trains={"model": ("step_scores",)}))
