"""Total, aleatoric and epistemic uncertainty of sampled answers (Depeweg et al. 2018 style).

For each prompt, M members (ensemble members, or paraphrases of the prompt) each give G
sampled answers, and each answer is mapped to a class id in [0, C): the same id means the
same answer. With p_m the empirical answer distribution of member m:

  total     = H(mean_m p_m)        the predictive entropy,
  aleatoric = mean_m H(p_m)        the spread each member has on its own,
  epistemic = total - aleatoric    the mutual information between answer and member, >= 0,

all in nats. Inputs are batched over prompts as [P, M, G]; everything is jnp and jit-able
with ``num_classes`` static.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import entr


class Decomposition(NamedTuple):
  """Per-prompt uncertainties in nats, [P] each; ``total = aleatoric + epistemic``."""
  total: jax.Array
  aleatoric: jax.Array
  epistemic: jax.Array


def answer_distributions(class_ids: jax.Array, valid: jax.Array, num_classes: int) -> jax.Array:
  """Each member's empirical answer distribution, [P, M, C], from [P, M, G] ids and validity.

  An id outside [0, C) counts as invalid. A member with no valid answer gets a row of zeros,
  which ``decompose`` leaves out of its means.
  """
  valid = valid.astype(bool) & (class_ids >= 0) & (class_ids < num_classes)
  counts = jnp.sum(jax.nn.one_hot(class_ids, num_classes) * valid[..., None], axis=-2)
  return counts / jnp.maximum(counts.sum(-1, keepdims=True), 1.0)


def decompose(class_ids: jax.Array, valid: jax.Array, num_classes: int) -> Decomposition:
  """Total, aleatoric and epistemic entropy per prompt from [P, M, G] answer class ids.

  Means over m are over the members holding at least one valid answer; a prompt with none
  gets 0 for all three.
  """
  probs = answer_distributions(class_ids, valid, num_classes)
  present = (probs.sum(-1) > 0).astype(jnp.float32)
  weights = present / jnp.maximum(present.sum(-1, keepdims=True), 1.0)
  total = entr(jnp.einsum("pm,pmc->pc", weights, probs)).sum(-1)
  aleatoric = jnp.sum(weights * entr(probs).sum(-1), axis=-1)
  # The difference rather than mean_m KL(p_m || mean p): equal in exact arithmetic, and this way
  # the three add up exactly.
  return Decomposition(total, aleatoric, total - aleatoric)


def answer_class_ids(tokens: jax.Array, mask: jax.Array) -> jax.Array:
  """Class ids for identical completions, [P, M, G], from ``tokens`` and ``mask`` [P, M, G, T].

  A completion is its tokens at the masked positions, in order, so two completions match when
  those sequences are equal, wherever the padding sits. Each sample's id is the flat index
  (m * G + g) of the first sample of the same prompt that matches it, so ids lie in
  [0, M * G): pass ``num_classes=M * G`` on. Pairwise comparison of the S = M * G samples:
  O(P S^2 T) time and memory, after an O(P S T log T) sort that moves masked tokens to the
  front of each row.
  """
  num_prompts, members, samples, length = tokens.shape
  tokens = tokens.reshape(num_prompts, members * samples, length).astype(jnp.int32)
  mask = mask.reshape(tokens.shape).astype(bool)
  order = jnp.argsort(jnp.logical_not(mask).astype(jnp.int32), axis=-1, stable=True)
  packed = jnp.take_along_axis(tokens, order, axis=-1)
  lengths = mask.sum(-1)
  # Zero the slots past each completion's end, so whole packed rows compare.
  packed = jnp.where(jnp.arange(length) < lengths[..., None], packed, 0)
  same = ((lengths[:, :, None] == lengths[:, None, :])
          & jnp.all(packed[:, :, None, :] == packed[:, None, :, :], axis=-1))
  # A sample always matches itself, so argmax finds a True: the first match.
  ids = jnp.argmax(same, axis=-1).astype(jnp.int32)
  return ids.reshape(num_prompts, members, samples)


def uncertainty_penalty(class_ids: jax.Array, valid: jax.Array, num_classes: int,
                        coef: float = 1.0) -> jax.Array:
  """A reward term: -coef * epistemic uncertainty of each sample's prompt, flat [P * M * G].

  Flattened prompt-major, as rewards arrive (each prompt's samples contiguous). Invalid
  samples get 0: they took no part in the estimate.
  """
  epistemic = decompose(class_ids, valid, num_classes).epistemic
  penalty = jnp.where(valid.astype(bool), -coef * epistemic[:, None, None], 0.0)
  return penalty.reshape(-1)
