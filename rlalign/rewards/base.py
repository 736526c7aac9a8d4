"""One interface for every reward: in-graph verifiers and host-side Python functions.

A reward maps a batch of rollouts to one float per rollout.

* In-graph rewards are jnp functions of token ids, ``fn(rollouts) -> [B]``, where
  ``rollouts`` maps ``prompt_tokens``/``prompt_mask`` [B, P], ``completion_tokens``/
  ``completion_mask`` [B, N] and ``answer_tokens``/``answer_mask`` [B, A] to arrays. When
  every reward of a run is in-graph, the whole RL iteration compiles into one program.
* Host rewards see decoded text, ``fn(prompts, completions, answers) -> [B]`` (lists of str
  in, numpy out). A run with one splits its iteration into a jitted sampler and a jitted
  update around the host call; nothing else changes.

A learned reward model or verifier is one more function registered here.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Mapping, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Reward:
  name: str
  fn: Callable
  in_graph: bool


_REGISTRY: Dict[str, Reward] = {}


def _register(name: str, in_graph: bool):
  def wrap(fn):
    if name in _REGISTRY:
      raise ValueError(f"reward {name!r} is registered twice")
    _REGISTRY[name] = Reward(name, fn, in_graph)
    return fn
  return wrap


def in_graph(name: str):
  """Registers ``fn(rollouts: Mapping[str, jax.Array]) -> jax.Array[B]``."""
  return _register(name, True)


def host(name: str):
  """Registers ``fn(prompts, completions, answers) -> np.ndarray[B]`` on decoded text."""
  return _register(name, False)


def get(name: str) -> Reward:
  if name not in _REGISTRY:
    raise KeyError(f"unknown reward {name!r}; registered: {sorted(_REGISTRY)}")
  return _REGISTRY[name]


def names() -> Tuple[str, ...]:
  return tuple(sorted(_REGISTRY))


def score_in_graph(rewards: Sequence[Reward], rollouts: Mapping[str, jax.Array]
                   ) -> Dict[str, jax.Array]:
  return {r.name: r.fn(rollouts).astype(jnp.float32) for r in rewards if r.in_graph}


def score_host(rewards: Sequence[Reward], prompts: Sequence[str], completions: Sequence[str],
               answers: Sequence[str]) -> Dict[str, np.ndarray]:
  scores = {}
  for r in rewards:
    if r.in_graph:
      continue
    value = np.asarray(r.fn(list(prompts), list(completions), list(answers)), np.float32)
    if value.shape != (len(prompts),):
      raise ValueError(f"host reward {r.name!r} returned shape {value.shape}, "
                       f"expected ({len(prompts)},)")
    scores[r.name] = value
  return scores


def combine(weights: Sequence[Tuple[str, float]], scores: Mapping[str, jax.Array]) -> jax.Array:
  """The weighted sum of per-source rewards that the advantage estimator sees."""
  return sum(w * jnp.asarray(scores[name], jnp.float32) for name, w in weights)
