"""Learned rewards: roles' scalar heads score prompt + completion inside the program.

  reward_model     one reward model's score
  reward_ensemble  K reward models' scores, aggregated: mean, min or mean - k * std
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Tuple

import jax
import jax.numpy as jnp

from rlalign.models import transformer as tfm
from rlalign.rewards import base


@dataclasses.dataclass(frozen=True)
class RewardModelSettings:
  role: str = "reward_model"  # the role whose scalar head scores
  scale: float = 1.0          # reward = scale * score + shift
  shift: float = 0.0

  def validate(self, prefix: str) -> None:
    if not self.role:
      raise ValueError(f"{prefix}.role must name the reward model's role")


@base.in_graph("reward_model", settings=RewardModelSettings, roles_of=lambda s: (s.role,))
def reward_model(rollouts: Mapping[str, jax.Array], roles: Mapping[str, base.RoleModel],
                 settings: RewardModelSettings) -> jax.Array:
  """The scalar head at the last real token of prompt + completion (a Bradley-Terry reward
  model, or a ``*ForSequenceClassification`` checkpoint with one label)."""
  rm = roles[settings.role]
  tokens = jnp.concatenate([rollouts["prompt_tokens"], rollouts["completion_tokens"]], axis=1)
  mask = jnp.concatenate([rollouts["prompt_mask"], rollouts["completion_mask"]], axis=1)
  scores = tfm.sequence_scores(rm.params, tokens, mask, rm.model)
  return settings.scale * scores + settings.shift


ENSEMBLE_AGGREGATES = ("mean", "min", "mean_minus_std")


@dataclasses.dataclass(frozen=True)
class EnsembleSettings:
  roles: Tuple[str, ...] = ("reward_model_0", "reward_model_1")  # one scalar head each
  aggregate: str = "mean_minus_std"  # mean | min | mean_minus_std
  std_coef: float = 1.0              # k of mean - k * std: the price of disagreement

  def validate(self, prefix: str) -> None:
    if len(self.roles) < 2 or len(set(self.roles)) != len(self.roles):
      raise ValueError(f"{prefix}.roles must name two or more distinct reward-model roles, got "
                       f"{self.roles}")
    if self.aggregate not in ENSEMBLE_AGGREGATES:
      raise ValueError(f"{prefix}.aggregate must be one of {ENSEMBLE_AGGREGATES}, got "
                       f"{self.aggregate!r}")
    if not math.isfinite(self.std_coef) or self.std_coef < 0:
      raise ValueError(f"{prefix}.std_coef must be finite and >= 0, got {self.std_coef}")


def aggregate(scores: jax.Array, settings: EnsembleSettings) -> jax.Array:
  """[K, B] members' scores -> [B]: the mean, the minimum (worst-case optimisation, Coste et
  al. 2024) or the mean minus std_coef times their (population) standard deviation."""
  if settings.aggregate == "mean":
    return scores.mean(axis=0)
  if settings.aggregate == "min":
    return scores.min(axis=0)
  return scores.mean(axis=0) - settings.std_coef * scores.std(axis=0)


@base.in_graph("reward_ensemble", settings=EnsembleSettings, roles_of=lambda s: tuple(s.roles))
def reward_ensemble(rollouts: Mapping[str, jax.Array], roles: Mapping[str, base.RoleModel],
                    settings: EnsembleSettings) -> jax.Array:
  """K reward models (roles of any size or family) scoring the same rollouts, aggregated;
  each member as ``reward_model`` scores."""
  member = lambda role: reward_model(rollouts, roles, RewardModelSettings(role=role))
  return aggregate(jnp.stack([member(role) for role in settings.roles]), settings)
