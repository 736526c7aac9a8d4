"""Advantage estimators over rollouts grouped by prompt.

Rewards arrive flat, [num_prompts * group_size], with each prompt's samples contiguous.
"""
from __future__ import annotations

from typing import Callable, Dict, NamedTuple

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


def batch_normalized(rewards: jax.Array, group_size: int, eps: float = 1e-6) -> jax.Array:
  """REINFORCE++'s global baseline: (r - mean r) / (std r + eps) over the whole batch."""
  del group_size
  r = rewards.astype(jnp.float32)
  return (r - r.mean()) / (r.std() + eps)


def raw(rewards: jax.Array, group_size: int) -> jax.Array:
  """The rewards themselves, for objectives whose ``prepare`` builds its own advantages
  (PPO's GAE, REINFORCE++'s returns)."""
  del group_size
  return rewards.astype(jnp.float32)


def greedy_baseline(rewards: jax.Array, group_size: int, baseline: jax.Array) -> jax.Array:
  """ReMax (Li et al. 2023): r minus the reward of the prompt's greedy completion.

  ``baseline`` is [num_prompts], one greedy completion's reward per prompt, which the iteration
  samples and scores beside the G sampled ones.
  """
  r = _grouped(rewards.astype(jnp.float32), group_size)
  return (r - baseline.astype(jnp.float32)[:, None]).reshape(-1)


class Estimator(NamedTuple):
  """``fn(rewards [B], group_size[, baseline]) -> advantages [B]``.

  ``min_group_size``: the samples per prompt it needs (2 for a group statistic).
  ``greedy_baseline``: the iteration also samples each prompt greedily and passes that
  completion's reward as ``baseline``.
  """
  fn: Callable[..., jax.Array]
  min_group_size: int = 2
  greedy_baseline: bool = False


ESTIMATORS: Dict[str, Estimator] = {
    "group_norm": Estimator(group_normalized),
    "group_mean": Estimator(group_centered),
    "leave_one_out": Estimator(leave_one_out),
    "batch_norm": Estimator(batch_normalized, min_group_size=1),
    "none": Estimator(raw, min_group_size=1),
    "greedy_baseline": Estimator(greedy_baseline, min_group_size=1, greedy_baseline=True),
}


def get(name: str) -> Estimator:
  if name not in ESTIMATORS:
    raise KeyError(f"unknown advantage estimator {name!r}; expected one of {sorted(ESTIMATORS)}")
  return ESTIMATORS[name]


def zero_variance_fraction(rewards: jax.Array, group_size: int) -> jax.Array:
  """Fraction of groups whose rewards are all equal: they carry no GRPO signal."""
  r = _grouped(rewards, group_size)
  return jnp.mean(jnp.all(r == r[:, :1], axis=-1).astype(jnp.float32))


def gae(rewards: jax.Array, values: jax.Array, mask: jax.Array, gamma: float, lam: float):
  """Generalised advantage estimation (Schulman et al. 2016) over right-padded completions.

  ``rewards``, ``values`` and ``mask`` are [B, T]; ``values[:, t]`` is V(s_t), the state before
  completion token t. The value after a row's last real token is 0 (the episode ends there),
  so with delta_t = r_t + gamma V(s_{t+1}) - V(s_t) the advantage is
  A_t = delta_t + gamma lam A_{t+1}, summed backwards with a reverse ``lax.scan`` over T.
  Returns ``(advantages, returns)``, [B, T] each, returns = A + V (the lambda-return);
  both are 0 at masked positions. A masked position ends the episode before it, so a row
  should be a prefix of real tokens followed by padding.
  """
  mask = mask.astype(jnp.float32)
  rewards = rewards.astype(jnp.float32) * mask
  values = values.astype(jnp.float32) * mask

  def backward(carry, xs):
    next_value, next_adv = carry
    r, v, m = xs
    delta = r + gamma * next_value - v
    adv = (delta + gamma * lam * next_adv) * m
    return (v * m, adv), adv

  zeros = jnp.zeros(rewards.shape[:1], jnp.float32)
  _, adv = jax.lax.scan(backward, (zeros, zeros), (rewards.T, values.T, mask.T), reverse=True)
  adv = adv.T
  return adv, (adv + values) * mask


def process_advantages(step_rewards: jax.Array, steps: jax.Array, mask: jax.Array,
                       group_size: int, eps: float = 1e-6) -> jax.Array:
  """Per-token advantages from step rewards (process supervision, Shao et al. 2024, §4.1.3).

  Each step's reward is normalised by the mean and std of every step reward in its prompt's
  group (all steps of all G completions), and token t's advantage is the sum of the
  normalised rewards of the steps that end at or after t.

  Args:
    step_rewards: [B, T] the reward of each step, at the step's last token (zero elsewhere).
    steps: [B, T] where the steps end.
    mask: [B, T] the completion's real tokens.
    group_size: G consecutive rows per prompt.

  Returns:
    [B, T] advantages, zero past the completion.
  """
  B, T = step_rewards.shape
  r = step_rewards.reshape(-1, group_size * T)
  s = steps.reshape(-1, group_size * T).astype(jnp.float32)
  n = jnp.maximum(s.sum(axis=1, keepdims=True), 1.0)
  mean = (r * s).sum(axis=1, keepdims=True) / n
  std = jnp.sqrt((((r - mean) * s) ** 2).sum(axis=1, keepdims=True) / n)
  normed = (((r - mean) / (std + eps)) * s).reshape(B, T)
  to_go = jnp.flip(jnp.cumsum(jnp.flip(normed, axis=1), axis=1), axis=1)
  return to_go * mask
