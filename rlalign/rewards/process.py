"""Process rewards: completions split into steps at a delimiter token, scored step by step.

  step_ends(tokens, mask, delimiter)   [B, N] where each step ends: at every delimiter, and at
                                       the completion's last token (its final step)
  process_reward_model                 a PRM role's scalar head just after each step's last
                                       token; a per-token reward (``Reward.per_token``) that the
                                       iteration turns into per-token advantages
                                       (``advantages.process_advantages``)
  monte_carlo_step_labels              Math-Shepherd's labels (Wang et al. 2024): from each
                                       step's prefix, K rollouts of the policy; a step is good
                                       when one of them (hard) or the fraction (soft) reaches
                                       the right answer

A per-token reward returns ``(values [B, N], steps [B, N])``: each step's score at its last
token, and where the steps end. Where a run needs one number per completion (dynamic sampling,
metrics), ``sequence_aggregate`` reduces the steps: the minimum (a chain is as good as its
worst step), the mean or the last.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Tuple

import jax
import jax.numpy as jnp

from rlalign.models import transformer as tfm
from rlalign.rewards import base
from rlalign.rewards import verifiers
from rlalign.sampling import sampler

AGGREGATES = ("min", "mean", "last")
EVERY_TOKEN = -1  # the delimiter id that makes every token a step (a token-level PRM)
UNRESOLVED = -2


def step_ends(tokens: jax.Array, mask: jax.Array, delimiter: int) -> jax.Array:
  """[B, N] bools: the completion's delimiters and its last real token (every real token
  with ``delimiter == EVERY_TOKEN``)."""
  mask = mask.astype(bool)
  if delimiter == EVERY_TOKEN:
    return mask
  last = jnp.sum(mask, axis=1) - 1
  is_last = (jnp.arange(tokens.shape[1])[None, :] == last[:, None]) & (last[:, None] >= 0)
  return mask & ((tokens == delimiter) | is_last)


def aggregate_steps(values: jax.Array, steps: jax.Array, how: str) -> jax.Array:
  """[B] one score per completion from its step scores (0 where it has no step)."""
  steps = steps.astype(bool)
  has = jnp.any(steps, axis=1)
  if how == "min":
    out = jnp.min(jnp.where(steps, values, jnp.inf), axis=1)
  elif how == "mean":
    out = jnp.sum(values * steps, axis=1) / jnp.maximum(jnp.sum(steps, axis=1), 1)
  elif how == "last":
    last = jnp.max(jnp.where(steps, jnp.arange(values.shape[1]), -1), axis=1)
    out = jnp.take_along_axis(values, jnp.maximum(last, 0)[:, None], axis=1)[:, 0]
  else:
    raise ValueError(f"unknown step aggregate {how!r}; expected one of {AGGREGATES}")
  return jnp.where(has, out, 0.0)


def single_token(tokenizer: Any, text: str, who: str, what: str = "the step delimiter") -> int:
  """``text``'s one token id, or a one-line error naming ``who`` and ``what`` it is."""
  ids = tokenizer.encode(text)
  if len(ids) != 1:
    raise ValueError(f"{who}: {what} {text!r} is {len(ids)} tokens in this tokenizer; it "
                     "must be one")
  return int(ids[0])


@dataclasses.dataclass(frozen=True)
class ProcessRewardSettings:
  role: str = "prm"
  delimiter: str = "\n"            # the text that ends a step: one token; "" every token
  delimiter_id: int = UNRESOLVED   # filled by ``resolve``, or set directly
  output: str = "probability"      # sigmoid of the head (a PRM trained by ``prm``) or "logit"
  sequence_aggregate: str = "min"  # min | mean | last

  heads_needed = ("step_scores",)

  def validate(self, prefix: str) -> None:
    if not self.role:
      raise ValueError(f"{prefix}.role must name the process reward model's role")
    if self.output not in ("probability", "logit"):
      raise ValueError(f"{prefix}.output must be 'probability' or 'logit', got {self.output!r}")
    if self.sequence_aggregate not in AGGREGATES:
      raise ValueError(f"{prefix}.sequence_aggregate must be one of {AGGREGATES}, got "
                       f"{self.sequence_aggregate!r}")

  def resolve(self, tokenizer: Any) -> "ProcessRewardSettings":
    if self.delimiter_id != UNRESOLVED:
      return self
    who = f"process_reward_model of role {self.role!r}"
    return dataclasses.replace(self,
                               delimiter_id=resolve_delimiter(tokenizer, self.delimiter, who))


def resolve_delimiter(tokenizer: Any, text: str, who: str) -> int:
  """The token id of a step delimiter, or EVERY_TOKEN for ""."""
  return single_token(tokenizer, text, who) if text else EVERY_TOKEN


def step_scores(params, model: tfm.ModelConfig, rollouts: Mapping[str, jax.Array]) -> jax.Array:
  """[B, N] the scalar head just after each completion token, over prompt + completion."""
  P = rollouts["prompt_tokens"].shape[1]
  tokens = jnp.concatenate([rollouts["prompt_tokens"], rollouts["completion_tokens"]], axis=1)
  mask = jnp.concatenate([rollouts["prompt_mask"], rollouts["completion_mask"]], axis=1)
  hidden, _ = tfm.forward(params, tokens, tfm.positions_from_mask(mask), mask, model)
  return tfm.scalar_output(params, hidden[:, P:])


@base.in_graph("process_reward_model", settings=ProcessRewardSettings,
               roles_of=lambda s: (s.role,), per_token=True)
def process_reward_model(rollouts: Mapping[str, jax.Array], roles: Mapping[str, base.RoleModel],
                         settings: ProcessRewardSettings) -> Tuple[jax.Array, jax.Array]:
  """Each step's PRM score at its last token, and where the steps end."""
  if settings.delimiter_id == UNRESOLVED:
    raise ValueError("process_reward_model: the delimiter has not been tokenised "
                     "(resolve(tokenizer)) and no delimiter_id is set")
  view = roles[settings.role]
  steps = step_ends(rollouts["completion_tokens"], rollouts["completion_mask"],
                    settings.delimiter_id)
  scores = step_scores(view.params, view.model, rollouts)
  if settings.output == "probability":
    scores = jax.nn.sigmoid(scores)
  return jnp.where(steps, scores, 0.0), steps


def monte_carlo_step_labels(params, model: tfm.ModelConfig, rollouts: Mapping[str, jax.Array],
                            rng: jax.Array, *, delimiter: int, samples: int,
                            sampling: sampler.SamplingConfig, soft: bool = False,
                            pad_id: int = 0) -> jax.Array:
  """Math-Shepherd's step labels, in-graph: [B, N] in [0, 1] at each step's end, -1 elsewhere.

  For row b and the step ending at position j, the prefix prompt + completion[:j + 1] is
  continued ``samples`` times by the policy (``params``); a continuation is right when the
  prefix followed by it exactly matches the reference answer (``verifiers.exact_match``). The
  hard label is 1 if any continuation is right, the soft label the fraction that are. The
  final step's label is the completion's own correctness. Every step of every row is
  continued at once: B * N * samples rows of ``sampling.max_new_tokens`` (static shapes).
  """
  tokens, mask = rollouts["completion_tokens"], rollouts["completion_mask"].astype(bool)
  B, N = tokens.shape
  steps = step_ends(tokens, mask, delimiter)
  j = jnp.arange(N)
  # Row (b, j): the prompt and the completion through position j, left-packed.
  keep = mask[:, None, :] & (j[None, None, :] <= j[None, :, None])            # [B, N(j), N]
  prefix_tokens = jnp.broadcast_to(tokens[:, None, :], (B, N, N))
  prompt = jnp.broadcast_to(rollouts["prompt_tokens"][:, None], (B, N) +
                            rollouts["prompt_tokens"].shape[1:])
  prompt_mask = jnp.broadcast_to(rollouts["prompt_mask"][:, None].astype(bool), prompt.shape)
  seq = jnp.concatenate([prompt, prefix_tokens], axis=2).reshape(B * N, -1)
  seq_mask = jnp.concatenate([prompt_mask, keep], axis=2).reshape(B * N, -1)
  order = jnp.argsort(seq_mask, axis=1, stable=True)
  seq = jnp.take_along_axis(seq, order, axis=1)
  seq_mask = jnp.take_along_axis(seq_mask, order, axis=1)
  rep = lambda x: jnp.repeat(x, samples, axis=0)
  out = sampler.sample(params, rep(seq), rep(seq_mask), rng, model, sampling, pad_id)
  # The candidate answer: the prefix (right-aligned to the front) then the continuation.
  prefix = jnp.where(keep, prefix_tokens, pad_id).reshape(B * N, N)
  prefix_mask = keep.reshape(B * N, N)
  candidate = jnp.concatenate([rep(prefix), out.tokens], axis=1)
  candidate_mask = jnp.concatenate([rep(prefix_mask), out.mask], axis=1)
  pack = jnp.argsort(~candidate_mask, axis=1, stable=True)  # real tokens first, in order
  candidate = jnp.take_along_axis(jnp.where(candidate_mask, candidate, -1), pack, axis=1)
  answers = {k: jnp.repeat(rollouts[k], N * samples, axis=0)
             for k in ("answer_tokens", "answer_mask")}
  right = verifiers.exact_match({"completion_tokens": candidate, **answers})
  right = right.reshape(B, N, samples)
  label = right.mean(axis=2) if soft else right.max(axis=2)
  own = verifiers.exact_match({"completion_tokens": jnp.where(mask, tokens, -1),
                               "answer_tokens": rollouts["answer_tokens"],
                               "answer_mask": rollouts["answer_mask"]})
  final = steps & (j[None, :] == (mask.sum(axis=1) - 1)[:, None])
  label = jnp.where(final, own[:, None], label)
  return jnp.where(steps, label, -1.0)
