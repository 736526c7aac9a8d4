"""Reward-model training on preference pairs: the Bradley-Terry model (Bradley & Terry 1952),
as in InstructGPT (Ouyang et al. 2022).

The model's scalar head at the last real token of prompt + completion is a score s; the
probability that the chosen completion beats the rejected one is sigma(s_c - s_r), and the
loss is its negative log-likelihood

  -log sigma(s_c - s_r - margin) + center_coef * mean((s_c + s_r)^2)

``margin`` > 0 asks the scores to differ by at least that much before the loss flattens (a
constant version of Llama 2's margin). Bradley-Terry fixes scores only up to a constant;
``center_coef`` > 0 pins that constant by pulling each pair's mean score towards zero
(Eisenstein et al. 2023), which keeps a learned reward on a known scale for RL.

The objective's slot is ``model``; a phase binds it to the run's reward-model role with
``slots={"model": "reward_model"}``. The role needs a scalar head (``heads=("scalar",)``).

Metrics (means over pairs): ``accuracy`` [s_c > s_r], ``margin`` s_c - s_r,
``chosen_score`` and ``rejected_score``.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp

from rlalign.objectives import base


@dataclasses.dataclass(frozen=True)
class BradleyTerryConfig:
  margin: float = 0.0       # the score gap below which a pair still has loss to reduce
  center_coef: float = 0.0  # weight of mean((s_c + s_r)^2), which centres the scores at zero

  def validate(self, prefix: str = "objective") -> None:
    if not self.margin >= 0:
      raise ValueError(f"{prefix}.margin must be >= 0, got {self.margin}")
    if not self.center_coef >= 0:
      raise ValueError(f"{prefix}.center_coef must be >= 0, got {self.center_coef}")


def bradley_terry_loss(hp: BradleyTerryConfig, outputs: Mapping[str, base.ModelOutputs],
                       batch: Mapping[str, jax.Array]):
  chosen, rejected = base.split_pairs(outputs["model"].scores.astype(jnp.float32))
  gap = chosen - rejected
  nll = -jnp.mean(jax.nn.log_sigmoid(gap - hp.margin))
  loss = nll
  if hp.center_coef:
    loss = loss + hp.center_coef * jnp.mean(jnp.square(chosen + rejected))
  metrics = {
      "nll": nll,
      "accuracy": jnp.mean((gap > 0).astype(jnp.float32)),
      "margin": jnp.mean(gap),
      "chosen_score": jnp.mean(chosen),
      "rejected_score": jnp.mean(rejected),
  }
  return loss, metrics


OBJECTIVE = base.register(base.Objective(
    name="bradley_terry", hparams=BradleyTerryConfig, loss_fn=bradley_terry_loss,
    batch="pairs", trains={"model": ("scores",)}))
