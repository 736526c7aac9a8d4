"""Advantage estimators over rollouts grouped by prompt.

Rewards arrive flat, [num_prompts * group_size], with each prompt's samples contiguous.
"""
from __future__ import annotations

from typing import Callable, Dict

import jax
import jax.numpy as jnp


def _grouped(rewards: jax.Array, group_size: int) -> jax.Array:
  if rewards.shape[0] % group_size:
    raise ValueError(f"{rewards.shape[0]} rewards do not split into groups of {group_size}")
  return rewards.reshape(-1, group_size)


def group_normalized(rewards: jax.Array, group_size: int, eps: float = 1e-6) -> jax.Array:
  """GRPO (DeepSeekMath): (r - mean_g r) / (std_g r + eps), population std over the group."""
  r = _grouped(rewards.astype(jnp.float32), group_size)
  adv = (r - r.mean(-1, keepdims=True)) / (r.std(-1, keepdims=True) + eps)
  return adv.reshape(-1)


def group_centered(rewards: jax.Array, group_size: int) -> jax.Array:
  """Dr.GRPO: r - mean_g r, with no division by the group's std."""
  r = _grouped(rewards.astype(jnp.float32), group_size)
  return (r - r.mean(-1, keepdims=True)).reshape(-1)


def leave_one_out(rewards: jax.Array, group_size: int) -> jax.Array:
  """RLOO: r_i minus the mean reward of the other samples of the same prompt."""
  r = _grouped(rewards.astype(jnp.float32), group_size)
  others = (r.sum(-1, keepdims=True) - r) / (group_size - 1)
  return (r - others).reshape(-1)


ESTIMATORS: Dict[str, Callable[[jax.Array, int], jax.Array]] = {
    "group_norm": group_normalized,
    "group_mean": group_centered,
    "leave_one_out": leave_one_out,
}


def get(name: str) -> Callable[[jax.Array, int], jax.Array]:
  if name not in ESTIMATORS:
    raise KeyError(f"unknown advantage estimator {name!r}; expected one of {sorted(ESTIMATORS)}")
  return ESTIMATORS[name]


def zero_variance_fraction(rewards: jax.Array, group_size: int) -> jax.Array:
  """Fraction of groups whose rewards are all equal: they carry no GRPO signal."""
  r = _grouped(rewards, group_size)
  return jnp.mean(jnp.all(r == r[:, :1], axis=-1).astype(jnp.float32))
