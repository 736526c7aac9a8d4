"""What a verifier learns and is tested on, recycled from rollouts whose outcome is known:
a balanced choice of right and wrong rows, and near misses of a gold answer. Shared by the
recipes that train a verifier from a generator's own samples (SPARK, RL Tango)."""
from __future__ import annotations

from typing import Tuple

import jax
import jax.numpy as jnp


def pick(key: jax.Array, allowed: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """[P] a uniformly random allowed column of each row of ``allowed`` [P, G], and whether
  the row has one (column 0 when not)."""
  noise = jax.random.uniform(key, allowed.shape)
  return jnp.argmax(jnp.where(allowed, noise, -1.0), axis=1), jnp.any(allowed, axis=1)


def balanced_rows(right: jax.Array, rng: jax.Array, n: int) -> jax.Array:
  """[n] row indices of ``right`` [R], right and wrong ones in turn, each kind in random
  order, while both last; then the kind that remains."""
  u = jax.random.uniform(rng, right.shape)
  by_kind = [jnp.argsort(jnp.where(right == kind, u, 2.0)) for kind in (True, False)]
  counts = [jnp.sum(right == kind) for kind in (True, False)]
  k = jnp.arange(right.shape[0])
  order = jnp.stack(by_kind, axis=1).reshape(-1)                  # r0 w0 r1 w1 ...
  valid = jnp.stack([k < counts[0], k < counts[1]], axis=1).reshape(-1)
  return order[jnp.argsort(~valid, stable=True)[:n]]


def near_miss(answer_tokens: jax.Array, answer_mask: jax.Array, digits: Tuple[int, ...],
              rng: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """The gold answers with one digit, at a random digit position, changed to another digit;
  and [B] that position."""
  digit_ids = jnp.asarray(digits, jnp.int32)
  is_digit = jnp.isin(answer_tokens, digit_ids) & answer_mask.astype(bool)
  k1, k2 = jax.random.split(rng)
  col, _ = pick(k1, is_digit)
  rows = jnp.arange(answer_tokens.shape[0])
  old = jnp.argmax(answer_tokens[rows, col][:, None] == digit_ids[None, :], axis=1)
  new = (old + jax.random.randint(k2, old.shape, 1, 10)) % 10
  return answer_tokens.at[rows, col].set(digit_ids[new]), col
