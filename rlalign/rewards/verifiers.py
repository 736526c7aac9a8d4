"""Rule-based verifiers on token ids (in-graph) and on text (host)."""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlalign.rewards import base


@base.in_graph("exact_match")
def exact_match(rollouts: Mapping[str, jax.Array], roles=None, settings=None) -> jax.Array:
  """1 if the completion, up to and including its stop token, equals the reference answer.

  ``answer_tokens`` ends with the stop token, so matching every answer position also checks
  that the completion stops exactly there.
  """
  del roles, settings
  answer, answer_mask = rollouts["answer_tokens"], rollouts["answer_mask"]
  completion = rollouts["completion_tokens"]
  width = answer.shape[1]
  if completion.shape[1] < width:
    completion = jnp.pad(completion, ((0, 0), (0, width - completion.shape[1])), constant_values=-1)
  same = (completion[:, :width] == answer) | ~answer_mask
  has_answer = jnp.any(answer_mask, axis=1)
  return (jnp.all(same, axis=1) & has_answer).astype(jnp.float32)


@base.in_graph("answer_digits")
def answer_digits(rollouts: Mapping[str, jax.Array], roles=None, settings=None) -> jax.Array:
  """Partial credit: the fraction of the reference answer's positions (its stop token
  included) that the completion matches, position by position; 1 exactly when
  ``exact_match`` is 1. A graded gold judge for proxy-vs-gold studies."""
  del roles, settings
  answer, answer_mask = rollouts["answer_tokens"], rollouts["answer_mask"]
  completion = jnp.where(rollouts["completion_mask"], rollouts["completion_tokens"], -1)
  width = answer.shape[1]
  if completion.shape[1] < width:
    completion = jnp.pad(completion, ((0, 0), (0, width - completion.shape[1])), constant_values=-1)
  right = (completion[:, :width] == answer) & answer_mask
  return right.sum(axis=1) / jnp.maximum(answer_mask.sum(axis=1), 1)


@dataclasses.dataclass(frozen=True)
class LengthSettings:
  normalize: bool = True  # divide by the rollouts' width (max_new_tokens): a value in [0, 1]

  def validate(self, prefix: str = "reward") -> None:
    del prefix


@base.in_graph("length", settings=LengthSettings)
def length(rollouts: Mapping[str, jax.Array], roles=None,
           settings: LengthSettings = LengthSettings()) -> jax.Array:
  """The completion's length in tokens (its stop token included), as a fraction of the budget
  by default: a length penalty with a negative weight."""
  del roles
  n = jnp.sum(rollouts["completion_mask"], axis=1).astype(jnp.float32)
  return n / rollouts["completion_mask"].shape[1] if settings.normalize else n


@base.in_graph("stopped")
def stopped(rollouts: Mapping[str, jax.Array], roles=None, settings=None) -> jax.Array:
  """1 if the completion ended with a stop token within the budget (a format reward)."""
  del roles, settings
  return rollouts["completion_stopped"].astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class OverlongSettings:
  max_length: int = 0  # L_max, the generation budget; 0: the rollouts' width (max_new_tokens)
  buffer: int = 4      # L_buf: the soft zone before L_max over which the penalty grows to -1

  def validate(self, prefix: str = "reward") -> None:
    if self.max_length < 0:
      raise ValueError(f"{prefix}.max_length must be >= 0, got {self.max_length}")
    if self.buffer <= 0 or (self.max_length and self.buffer > self.max_length):
      raise ValueError(f"{prefix}.buffer must be in [1, max_length], got {self.buffer}")


@base.in_graph("overlong", settings=OverlongSettings)
def overlong(rollouts: Mapping[str, jax.Array], roles=None,
             settings: OverlongSettings = OverlongSettings()) -> jax.Array:
  """DAPO's soft overlong punishment (Yu et al. 2025): min(-(|o| - (L_max - L_buf)) / L_buf, 0).

  0 for completions up to L_max - L_buf tokens, falling linearly to -1 at L_max and -1 beyond
  it; a term to add with weight 1 beside the task reward.
  """
  del roles
  length = jnp.sum(rollouts["completion_mask"], axis=1).astype(jnp.float32)
  max_length = settings.max_length or rollouts["completion_mask"].shape[1]
  excess = length - (max_length - settings.buffer)
  return jnp.clip(-excess / settings.buffer, -1.0, 0.0)


@base.host("exact_match_text")
def exact_match_text(prompts: Sequence[str], completions: Sequence[str],
                     answers: Sequence[str]) -> np.ndarray:
  """Host twin of ``exact_match``: whitespace-stripped string equality."""
  del prompts
  return np.array([float(c.strip() == a.strip()) for c, a in zip(completions, answers)])
