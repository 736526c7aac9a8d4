"""Epistemic uncertainty of the prompt as a reward term: members (roles with an LM head: the
policy itself, its earlier checkpoints, sibling policies) each answer the prompt ``samples``
times in-graph; the spread of answers across members, beyond what each member's own sampling
explains, is the mutual information of ``diagnostics.uncertainty.decompose`` (total entropy
minus the members' mean entropy, in nats over identical completions).

  rewards={"exact_match": 1.0,
           "epistemic": {"name": "epistemic_uncertainty", "weight": -0.5,
                         "members": ("policy", "sibling"), "samples": 4}}

With a negative weight it is a penalty on prompts the members disagree about (where the
policy is guessing); with a positive one, a curiosity bonus. Every row's prompt is sampled
``len(members) * samples`` times: B * M * S extra rollouts a step.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Tuple

import jax
import jax.numpy as jnp

from rlalign.diagnostics import uncertainty
from rlalign.rewards import base
from rlalign.sampling import sampler


@dataclasses.dataclass(frozen=True)
class EpistemicSettings:
  members: Tuple[str, ...] = ("policy", "reference")
  samples: int = 4            # answers per member per prompt
  max_new_tokens: int = 0     # 0: the rollouts' own width
  temperature: float = 1.0
  stop_ids: Tuple[int, ...] = ()  # filled by ``resolve``: the tokenizer's EOS

  heads_needed = ("logprobs",)

  def validate(self, prefix: str) -> None:
    if len(self.members) < 2 or len(set(self.members)) != len(self.members):
      raise ValueError(f"{prefix}.members must name two or more distinct roles, got "
                       f"{self.members}")
    if self.samples < 1:
      raise ValueError(f"{prefix}.samples must be >= 1, got {self.samples}")
    if self.max_new_tokens < 0 or self.temperature < 0:
      raise ValueError(f"{prefix}.max_new_tokens and {prefix}.temperature must be >= 0")

  def resolve(self, tokenizer: Any) -> "EpistemicSettings":
    return dataclasses.replace(self, stop_ids=(int(tokenizer.eos_id),))


@base.in_graph("epistemic_uncertainty", settings=EpistemicSettings,
               roles_of=lambda s: tuple(s.members))
def epistemic_uncertainty(rollouts: Mapping[str, jax.Array], roles: Mapping[str, base.RoleModel],
                          settings: EpistemicSettings) -> jax.Array:
  """[B] the epistemic part of the entropy of the members' answers to each row's prompt."""
  prompts, mask = rollouts["prompt_tokens"], rollouts["prompt_mask"]
  B, S = prompts.shape[0], settings.samples
  config = sampler.SamplingConfig(
      max_new_tokens=settings.max_new_tokens or rollouts["completion_tokens"].shape[1],
      temperature=settings.temperature, stop_tokens=settings.stop_ids)
  rng = rollouts.get("rng", jax.random.PRNGKey(0))
  tokens, valid = [], []
  for i, name in enumerate(settings.members):
    view = roles[name]
    out = sampler.sample(view.params, jnp.repeat(prompts, S, axis=0),
                         jnp.repeat(mask, S, axis=0), jax.random.fold_in(rng, i), view.model,
                         config)
    tokens.append(out.tokens.reshape(B, S, -1))
    valid.append(out.mask.reshape(B, S, -1))
  tokens, valid = jnp.stack(tokens, axis=1), jnp.stack(valid, axis=1)  # [B, M, S, N]
  ids = uncertainty.answer_class_ids(tokens, valid)
  M = len(settings.members)
  parts = uncertainty.decompose(ids, jnp.ones(ids.shape, bool), M * S)
  return jax.lax.stop_gradient(parts.epistemic)
