"""The objective interface and its registry.

An objective is a small pure loss over one minibatch of rollouts::

  loss_fn(hparams, policy: PolicyOutputs, batch: Mapping[str, jax.Array]) -> (loss, metrics)

``policy`` holds what the current params say about the batch (per-token log-probs and
entropies); ``batch`` holds what was fixed when the rollouts were made: ``mask`` [B, T] over
completion tokens, ``old_logprobs`` and ``ref_logprobs`` [B, T], ``advantages`` [B]. A new
objective is one file in this package that calls :func:`register`; the trainer looks it up by
the name in ``config.objective.name`` and builds its typed hparams from the other keys.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Mapping, NamedTuple, Tuple, Type

import jax
import jax.numpy as jnp

Metrics = Dict[str, jax.Array]


class PolicyOutputs(NamedTuple):
  logprobs: jax.Array  # [B, T] log pi_theta(token)
  entropy: jax.Array   # [B, T]


@dataclasses.dataclass(frozen=True)
class Objective:
  name: str
  hparams: Type[Any]  # a frozen dataclass of the objective's settings
  loss_fn: Callable[[Any, PolicyOutputs, Mapping[str, jax.Array]], Tuple[jax.Array, Metrics]]
  needs_reference: Callable[[Any], bool] = lambda hparams: False


_REGISTRY: Dict[str, Objective] = {}


def register(objective: Objective) -> Objective:
  if objective.name in _REGISTRY:
    raise ValueError(f"objective {objective.name!r} is registered twice")
  _REGISTRY[objective.name] = objective
  return objective


def get(name: str) -> Objective:
  if name not in _REGISTRY:
    raise KeyError(f"unknown objective {name!r}; registered: {sorted(_REGISTRY)}")
  return _REGISTRY[name]


def names() -> Tuple[str, ...]:
  return tuple(sorted(_REGISTRY))


def aggregate(per_token: jax.Array, mask: jax.Array, mode: str) -> jax.Array:
  """Reduces a [B, T] per-token loss to a scalar.

  "token": every completion token in the minibatch weighs the same (DAPO).
  "sequence": mean over sequences of each sequence's token mean (the GRPO paper's 1/|o_i|).
  """
  mask = mask.astype(per_token.dtype)
  if mode == "token":
    return jnp.sum(per_token * mask) / jnp.maximum(jnp.sum(mask), 1.0)
  if mode == "sequence":
    per_seq = jnp.sum(per_token * mask, axis=-1) / jnp.maximum(jnp.sum(mask, axis=-1), 1.0)
    return jnp.mean(per_seq)
  raise ValueError(f"unknown loss aggregation {mode!r}; expected 'token' or 'sequence'")


AGGREGATIONS = ("token", "sequence")
