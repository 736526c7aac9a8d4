"""Learned rewards: roles' scalar heads score prompt + completion inside the program.

  reward_model     one reward model's score (one head's, or the mean of its K heads)
  reward_ensemble  K members' scores, aggregated: mean, min or mean - k * std; the members are
                   every scalar head of the named roles, so K reward models, one model with K
                   heads (``roles.<name>.scalar_heads``), or a mix

A settings class may define ``check_roles(models, prefix)``: the run calls it with the
ModelConfig of each role the reward reads, before anything is traced.
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
  head: int = -1              # of a role with K scalar heads: which one; -1 their mean

  def validate(self, prefix: str) -> None:
    if not self.role:
      raise ValueError(f"{prefix}.role must name the reward model's role")
    if self.head < -1:
      raise ValueError(f"{prefix}.head must be a head index or -1 (the mean), got {self.head}")

  def check_roles(self, models, prefix: str) -> None:
    heads = models[self.role].scalar_heads
    if self.head >= heads:
      raise ValueError(f"{prefix}.head is {self.head}, but role {self.role!r} has {heads} "
                       f"scalar head(s) (roles.{self.role}.scalar_heads)")


def member_scores(rollouts: Mapping[str, jax.Array], rm: base.RoleModel) -> jax.Array:
  """[B, K]: each of the role's K scalar heads' scores of prompt + completion (K = 1 for a
  plain reward model)."""
  tokens = jnp.concatenate([rollouts["prompt_tokens"], rollouts["completion_tokens"]], axis=1)
  mask = jnp.concatenate([rollouts["prompt_mask"], rollouts["completion_mask"]], axis=1)
  scores = tfm.sequence_scores(rm.params, tokens, mask, rm.model)
  return scores.reshape(scores.shape[0], -1)


@base.in_graph("reward_model", settings=RewardModelSettings, roles_of=lambda s: (s.role,))
def reward_model(rollouts: Mapping[str, jax.Array], roles: Mapping[str, base.RoleModel],
                 settings: RewardModelSettings) -> jax.Array:
  """The scalar head at the last real token of prompt + completion (a Bradley-Terry reward
  model, or a ``*ForSequenceClassification`` checkpoint with one label)."""
  scores = member_scores(rollouts, roles[settings.role])
  scores = scores.mean(axis=1) if settings.head < 0 else scores[:, settings.head]
  return settings.scale * scores + settings.shift


ENSEMBLE_AGGREGATES = ("mean", "min", "mean_minus_std")


@dataclasses.dataclass(frozen=True)
class EnsembleSettings:
  # Every scalar head of these roles is a member: ("rm",) with roles.rm.scalar_heads=K, or
  # K roles of one head each (of any size or family).
  roles: Tuple[str, ...] = ("reward_model_0", "reward_model_1")
  aggregate: str = "mean_minus_std"  # mean | min | mean_minus_std
  std_coef: float = 1.0              # k of mean - k * std: the price of disagreement

  def validate(self, prefix: str) -> None:
    if not self.roles or len(set(self.roles)) != len(self.roles):
      raise ValueError(f"{prefix}.roles must name distinct reward-model roles, got "
                       f"{self.roles}")
    if self.aggregate not in ENSEMBLE_AGGREGATES:
      raise ValueError(f"{prefix}.aggregate must be one of {ENSEMBLE_AGGREGATES}, got "
                       f"{self.aggregate!r}")
    if not math.isfinite(self.std_coef) or self.std_coef < 0:
      raise ValueError(f"{prefix}.std_coef must be finite and >= 0, got {self.std_coef}")

  def check_roles(self, models, prefix: str) -> None:
    members = sum(models[role].scalar_heads for role in self.roles)
    if members < 2:
      raise ValueError(f"{prefix}.roles {self.roles} have {members} scalar head in all; an "
                       "ensemble needs two or more (more roles, or roles.<name>.scalar_heads)")


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
  """Every scalar head of the named roles scoring the same rollouts, aggregated."""
  members = [member_scores(rollouts, roles[role]) for role in settings.roles]
  return aggregate(jnp.concatenate(members, axis=1).T, settings)
