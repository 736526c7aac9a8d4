"""Rewards that need no reference answer: the label-free baselines of easy-to-hard transfer.

``majority_vote``    self-consistency (TTRL, Zuo et al. 2025): the most common completion among
                     the samples of a prompt is its pseudo-label, and each sample scores 1 if
                     it is that completion. Groups are found by equal prompts, so the reward
                     needs no group size and a prompt drawn twice in a batch is one group.
``self_confidence``  the policy judging its own answer by how sure it was of it: the geometric
                     mean of its tokens' probabilities, exp(mean log p), from the sampler's
                     log-probs. The self-judging baseline for a model that cannot read a judge
                     prompt; as a reward it is entropy minimisation.

A completion that did not stop within the budget is no answer: it scores 0 in both, and never
becomes a pseudo-label.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

from rlalign.rewards import base


def _rows_equal(tokens: jax.Array, mask: jax.Array) -> jax.Array:
  """[B, B]: whether rows i and j hold the same real tokens (padding ignored)."""
  masked = jnp.where(mask, tokens, -1)
  return jnp.all(masked[:, None, :] == masked[None, :, :], axis=-1)


def majority_answers(rollouts: Mapping[str, jax.Array]) -> jax.Array:
  """[B] bools: whether each row's completion is its prompt's most common stopped completion
  (ties go to the one sampled first)."""
  same_prompt = _rows_equal(rollouts["prompt_tokens"], rollouts["prompt_mask"].astype(bool))
  same_answer = _rows_equal(rollouts["completion_tokens"],
                            rollouts["completion_mask"].astype(bool))
  answered = rollouts["completion_stopped"].astype(bool)
  agree = same_prompt & same_answer & answered[None, :] & answered[:, None]
  votes = jnp.sum(agree, axis=1)                                  # [B], 0 if no answer
  group_votes = jnp.where(same_prompt, votes[None, :], -1)        # [B, B]: j's votes, i's group
  best = jnp.max(group_votes, axis=1)
  # The first row of each group holding the most votes stands for the majority answer.
  representative = jnp.argmax(group_votes == best[:, None], axis=1)
  is_majority = jnp.take_along_axis(same_answer, representative[:, None], axis=1)[:, 0]
  return is_majority & answered & (best > 0)


@base.in_graph("majority_vote")
def majority_vote(rollouts: Mapping[str, jax.Array], roles=None, settings=None) -> jax.Array:
  del roles, settings
  return majority_answers(rollouts).astype(jnp.float32)


@base.in_graph("self_confidence")
def self_confidence(rollouts: Mapping[str, jax.Array], roles=None, settings=None) -> jax.Array:
  del roles, settings
  if "logprobs" not in rollouts:
    raise ValueError("self_confidence reads the sampler's log-probs of the completion, which "
                     "these rollouts lack (it is a training reward, not a held-out judge)")
  mask = rollouts["completion_mask"].astype(jnp.float32)
  mean = jnp.sum(rollouts["logprobs"] * mask, axis=1) / jnp.maximum(mask.sum(axis=1), 1.0)
  return jnp.where(rollouts["completion_stopped"].astype(bool), jnp.exp(mean), 0.0)
