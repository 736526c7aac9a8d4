"""Learned rewards: a role's scalar head scores prompt + completion inside the program."""
from __future__ import annotations

import dataclasses
from typing import Mapping

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
