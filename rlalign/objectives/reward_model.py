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

A role with K scalar heads (``roles.<name>.scalar_heads``) trains K reward models on one
backbone: the loss is the mean of the heads' losses. Heads that see the same pairs with the
same weights learn nearly the same function, which makes their disagreement a poor penalty.
``bootstrap`` gives each (head, pair) a Poisson(1) weight fixed by the pair's tokens, the head
and ``bootstrap_seed``: each head trains on its own bootstrap resample of the data, the same
one in every epoch (bagging, as online bagging draws it; Oza & Russell 2001). Phases that
train separate reward-model roles set different seeds.

Metrics (means over pairs, and over heads): ``accuracy`` [s_c > s_r], ``margin`` s_c - s_r,
``chosen_score`` and ``rejected_score``; with K heads also ``head_disagreement``, the mean over
rows of the heads' standard deviation.
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
  bootstrap: bool = False   # each head its own Poisson(1) resample of the pairs
  bootstrap_seed: int = 0   # which resample; differ it across reward-model roles

  def validate(self, prefix: str = "objective") -> None:
    if not self.margin >= 0:
      raise ValueError(f"{prefix}.margin must be >= 0, got {self.margin}")
    if not self.center_coef >= 0:
      raise ValueError(f"{prefix}.center_coef must be >= 0, got {self.center_coef}")


def row_hash(tokens: jax.Array, mask: jax.Array) -> jax.Array:
  """[B, T] token ids -> [B] uint32, a function of the real tokens and their positions only
  (padding changes nothing), so a pair hashes the same in every minibatch it lands in."""
  x = jnp.where(mask, tokens.astype(jnp.uint32) + 1, 0)
  powers = jnp.cumprod(jnp.full(tokens.shape[1], 0x01000193, jnp.uint32))  # FNV prime, wraps
  # Positions counted over real tokens only, so left padding moves nothing.
  rank = jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1, 0)
  h = jnp.sum(x * powers[rank], axis=1, dtype=jnp.uint32)
  # murmur3's finaliser: nearby sums land far apart.
  h = (h ^ (h >> 16)) * jnp.uint32(0x85EBCA6B)
  h = (h ^ (h >> 13)) * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def bootstrap_weights(batch: Mapping[str, jax.Array], heads: int, seed: int) -> jax.Array:
  """[B pairs, K] Poisson(1) weights, fixed by each pair's chosen sequence, the head and the
  seed: how many times head k draws the pair in its bootstrap resample."""
  tokens = jnp.concatenate([batch["prompt_tokens"], batch["completion_tokens"]], axis=1)
  mask = jnp.concatenate([batch["prompt_mask"], batch["mask"]], axis=1)
  chosen_tokens, _ = base.split_pairs(tokens)
  chosen_mask, _ = base.split_pairs(mask)
  key = jax.random.key(seed)
  draw = lambda h: jax.random.poisson(jax.random.fold_in(key, h), 1.0, (heads,))
  return jax.vmap(draw)(row_hash(chosen_tokens, chosen_mask)).astype(jnp.float32)


def bradley_terry_loss(hp: BradleyTerryConfig, outputs: Mapping[str, base.ModelOutputs],
                       batch: Mapping[str, jax.Array]):
  scores = outputs["model"].scores.astype(jnp.float32)
  scores = scores.reshape(scores.shape[0], -1)  # [2B, K]; K = 1 for one head
  chosen, rejected = base.split_pairs(scores)
  gap = chosen - rejected
  per_pair = -jax.nn.log_sigmoid(gap - hp.margin)
  if hp.center_coef:
    per_pair = per_pair + hp.center_coef * jnp.square(chosen + rejected)
  if hp.bootstrap:
    # Each head's weighted mean; a head that drew no pair of this minibatch adds nothing.
    w = bootstrap_weights(batch, scores.shape[1], hp.bootstrap_seed)
    loss = jnp.mean(jnp.sum(w * per_pair, axis=0) / jnp.maximum(jnp.sum(w, axis=0), 1.0))
  else:
    loss = jnp.mean(per_pair)
  metrics = {
      "nll": -jnp.mean(jax.nn.log_sigmoid(gap - hp.margin)),
      "accuracy": jnp.mean((gap > 0).astype(jnp.float32)),
      "margin": jnp.mean(gap),
      "chosen_score": jnp.mean(chosen),
      "rejected_score": jnp.mean(rejected),
  }
  if scores.shape[1] > 1:
    metrics["head_disagreement"] = jnp.mean(jnp.std(scores, axis=1))
  return loss, metrics


OBJECTIVE = base.register(base.Objective(
    name="bradley_terry", hparams=BradleyTerryConfig, loss_fn=bradley_terry_loss,
    batch="pairs", trains={"model": ("scores",)}))
