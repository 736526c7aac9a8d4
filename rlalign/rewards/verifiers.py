"""Rule-based verifiers on token ids (in-graph) and on text (host)."""
from __future__ import annotations

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


@base.in_graph("stopped")
def stopped(rollouts: Mapping[str, jax.Array], roles=None, settings=None) -> jax.Array:
  """1 if the completion ended with a stop token within the budget (a format reward)."""
  del roles, settings
  return rollouts["completion_stopped"].astype(jnp.float32)


@base.host("exact_match_text")
def exact_match_text(prompts: Sequence[str], completions: Sequence[str],
                     answers: Sequence[str]) -> np.ndarray:
  """Host twin of ``exact_match``: whitespace-stripped string equality."""
  del prompts
  return np.array([float(c.strip() == a.strip()) for c, a in zip(completions, answers)])
