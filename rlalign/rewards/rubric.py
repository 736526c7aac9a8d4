"""The rubric task's gold judge in-graph: ``rubric_points``, the share of its five points a
completion earns (``rlalign/data/rubric.py`` says what each is for).

The key of the judge is the answer field, the constraints' four digits (L, F, E, H), each one
token; the completion is read up to its stop token. ``criteria`` gives the five verdicts a row,
for an evaluator that reports them one by one.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Tuple

import jax
import jax.numpy as jnp

from rlalign.rewards import base


@dataclasses.dataclass(frozen=True)
class RubricSettings:
  digit_ids: Tuple[int, ...] = ()  # filled by ``resolve``: the ids of "0".."9"
  stop_ids: Tuple[int, ...] = ()   # and of the stop token, which no criterion counts

  def validate(self, prefix: str) -> None:
    del prefix

  def resolve(self, tokenizer: Any) -> "RubricSettings":
    ids = [tuple(int(i) for i in tokenizer.encode(d)) for d in "0123456789"]
    bad = next((d for d, i in zip("0123456789", ids) if len(i) != 1), None)
    if bad is not None:
      raise ValueError(f"rubric_points: the digit {bad!r} is {len(ids[int(bad)])} tokens in "
                       "this tokenizer; the rubric reads one-token digits")
    joined = tuple(int(i) for i in tokenizer.encode("0123456789"))
    if joined != tuple(i[0] for i in ids):
      raise ValueError("rubric_points: this tokenizer merges digits ('0123456789' is "
                       f"{len(joined)} tokens, not 10); the rubric reads one token a digit")
    return dataclasses.replace(self, digit_ids=tuple(i[0] for i in ids),
                               stop_ids=(int(tokenizer.eos_id),))


def criteria(rollouts: Mapping[str, jax.Array], settings: RubricSettings) -> jax.Array:
  """[B, 5] bools: digits, length, first, last, has (``data.rubric.CRITERIA``)."""
  if not settings.digit_ids:
    raise ValueError("rubric_points: the settings have not been resolved (resolve(tokenizer))")
  digits = jnp.asarray(settings.digit_ids, jnp.int32)
  tokens = rollouts["completion_tokens"]
  real = rollouts["completion_mask"].astype(bool)
  if settings.stop_ids:
    real = real & ~jnp.isin(tokens, jnp.asarray(settings.stop_ids, jnp.int32))
  n = jnp.sum(real, axis=1)
  spec = rollouts["answer_tokens"][:, :4]
  value = jnp.argmax(spec[..., None] == digits, axis=-1)      # [B, 4]: L, F, E, H
  is_spec = jnp.all(jnp.any(spec[..., None] == digits, axis=-1), axis=1)
  want = digits[value]                                         # their tokens
  last = jnp.take_along_axis(tokens, jnp.maximum(n - 1, 0)[:, None], axis=1)[:, 0]
  some = n > 0
  out = jnp.stack([
      some & jnp.all(jnp.isin(tokens, digits) | ~real, axis=1),
      n == value[:, 0],
      some & (tokens[:, 0] == want[:, 1]),
      some & (last == want[:, 2]),
      jnp.any(real & (tokens == want[:, 3:4]), axis=1),
  ], axis=1)
  return out & is_spec[:, None]  # a row without a key earns nothing


@base.in_graph("rubric_points", settings=RubricSettings)
def rubric_points(rollouts: Mapping[str, jax.Array], roles=None,
                  settings: RubricSettings = RubricSettings()) -> jax.Array:
  """The gold judge: points earned / 5, in [0, 1]."""
  del roles
  return jnp.mean(criteria(rollouts, settings).astype(jnp.float32), axis=1)

