"""Online DPO: DPO on preference pairs the policy samples and the phase's rewards rank (Guo et
al. 2024, "Direct Language Model Alignment from Online AI Feedback"; iterative DPO as in Xu et
al. 2023, "Some things are more CRINGE than others", and Xiong et al. 2024, "Iterative
Preference Learning from Human Feedback").

The policy samples G completions per prompt and the phase's rewards (any of them: a rule
verifier, a learned reward model, an LLM judge) score each. ``prepare`` turns every group into
one preference pair, chosen = the group's highest-reward sample and rejected = its lowest
(ties broken by the first index), and gathers every row-aligned key of the batch into the pairs
layout: the B / G chosen rows, then the same groups' rejected rows, 2B / G rows in all. A group
whose rewards are all equal states no preference (its "pair" is one sample twice): its
``pair_weight`` is 0. The update then shuffles whole pairs (``pairs_layout``), so every
minibatch keeps chosen rows first, as offline DPO's.

The loss is DPO's per-pair loss (``dpo.dpo_terms``: beta, cDPO's label_smoothing) against the
frozen reference, averaged over each minibatch's weighted pairs, and 0 when none of them has a
preference. The reference is required (``needs_reference``); it is the run's reference role, so
"iterative" DPO (a reference refreshed each round) is a recipe that copies the policy into it.

Metrics: DPO's (``dpo.dpo_metrics``, means over the minibatch's informative pairs), and from
``prepare``, over the whole batch:

  informative_pairs   the fraction of groups with a preference (rewards not all equal)
  chosen_reward_gap   the mean over groups of the chosen minus the rejected sample's reward
                      (0 for a tied group)
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import jax
import jax.numpy as jnp

from rlalign.objectives import base, dpo


@dataclasses.dataclass(frozen=True)
class OnlineDPOConfig(dpo.DPOConfig):
  """DPO's settings: ``beta`` and ``label_smoothing``."""


def best_and_worst(rewards: jax.Array, group_size: int):
  """Per group of ``group_size`` contiguous rows: the row of its highest reward, of its lowest
  (the first such row on ties), and whether the group's rewards differ at all."""
  B = rewards.shape[0]
  if group_size < 2 or B % group_size:
    raise ValueError(f"online_dpo pairs the samples of each prompt: the batch's {B} rows must "
                     f"be whole groups of group_size >= 2 samples, got group_size={group_size}")
  grouped = rewards.astype(jnp.float32).reshape(B // group_size, group_size)
  offsets = jnp.arange(B // group_size) * group_size
  chosen = offsets + jnp.argmax(grouped, axis=1)
  rejected = offsets + jnp.argmin(grouped, axis=1)
  informative = jnp.max(grouped, axis=1) > jnp.min(grouped, axis=1)
  return chosen, rejected, informative


def online_dpo_prepare(hp: OnlineDPOConfig, batch: Mapping[str, jax.Array],
                       score: Callable[[str, tuple], base.ModelOutputs], group_size: int = 1):
  """Each group's best and worst samples as a preference pair, in the pairs layout."""
  del hp, score
  rewards = batch["rewards"]
  B = rewards.shape[0]
  chosen, rejected, informative = best_and_worst(rewards, group_size)
  rows = jnp.concatenate([chosen, rejected])
  out = {}
  for key, value in batch.items():
    if value.ndim == 0 or value.shape[0] != B:
      raise ValueError(f"online_dpo: batch key {key!r} has shape {value.shape}, not one row "
                       f"per sample ({B}); prepare can only regroup row-aligned keys")
    out[key] = value[rows]
  weight = informative.astype(jnp.float32)
  out["pair_weight"] = jnp.concatenate([weight, weight])
  gap = rewards.astype(jnp.float32)[chosen] - rewards.astype(jnp.float32)[rejected]
  metrics = {"informative_pairs": jnp.mean(weight), "chosen_reward_gap": jnp.mean(gap)}
  return out, metrics


def online_dpo_loss(hp: OnlineDPOConfig, outputs: Mapping[str, base.ModelOutputs],
                    batch: Mapping[str, jax.Array]):
  losses, terms = dpo.dpo_terms(hp, outputs["policy"].logprobs, batch["ref_logprobs"],
                                batch["mask"])
  weight, _ = base.split_pairs(batch["pair_weight"])
  return dpo.weighted_mean(losses, weight), dpo.dpo_metrics(terms, weight)


OBJECTIVE = base.register(base.Objective(
    name="online_dpo", hparams=OnlineDPOConfig, loss_fn=online_dpo_loss, batch="rollouts",
    trains={"policy": ("logprobs",)}, needs_reference=lambda hp: True,
    prepare=online_dpo_prepare, pairs_layout=True, any_sampler=True))
