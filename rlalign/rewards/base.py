"""One interface for every reward: in-graph functions of token ids (and of roles' params), and
host-side Python functions of decoded text.

A reward maps a batch of rollouts to one float per rollout.

* In-graph rewards are ``fn(rollouts, roles, settings) -> [B]``. ``rollouts`` maps
  ``prompt_tokens``/``prompt_mask`` [B, P], ``completion_tokens``/``completion_mask`` [B, N]
  and ``answer_tokens``/``answer_mask`` [B, A] to arrays. ``roles`` maps the role names the
  reward reads (``roles_of(settings)``) to :class:`RoleModel` (static model config plus params:
  arguments of the compiled program, never constants). ``settings`` is the reward's own frozen
  dataclass, type-checked from the config. When every reward of a run is in-graph, the whole RL
  iteration compiles into one program.
* Host rewards see decoded text, ``fn(prompts, completions, answers) -> [B]`` (lists of str
  in, numpy out). A run with one splits its iteration into a jitted sampler and a jitted
  update around the host call; nothing else changes.

Every module of this package registers its rewards on import (``rewards/__init__.py`` imports
them all), so a new reward is one new file.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Mapping, NamedTuple, Sequence, Tuple, Type

import jax
import jax.numpy as jnp
import numpy as np

from rlalign import registry


@dataclasses.dataclass(frozen=True)
class NoSettings:
  """The settings of a reward that has none."""

  def validate(self, prefix: str) -> None:
    del prefix


class RoleModel(NamedTuple):
  """A role as a reward sees it inside a traced program."""
  model: Any   # its tfm.ModelConfig (static)
  params: Any  # its params pytree (traced)


@dataclasses.dataclass(frozen=True)
class Reward:
  name: str
  fn: Callable
  in_graph: bool
  settings: Type[Any] = NoSettings
  roles_of: Callable[[Any], Tuple[str, ...]] = lambda settings: ()


@dataclasses.dataclass(frozen=True)
class RewardTerm:
  """One weighted reward of a run, with its typed settings."""
  name: str
  weight: float = 1.0
  settings: Any = NoSettings()

  @property
  def reward(self) -> Reward:
    return get(self.name)

  @property
  def roles(self) -> Tuple[str, ...]:
    return tuple(self.reward.roles_of(self.settings))


_REGISTRY: registry.Registry[Reward] = registry.Registry("reward")


def _register(name: str, in_graph: bool, settings: Type[Any] = NoSettings,
              roles_of: Callable[[Any], Tuple[str, ...]] = lambda settings: ()):
  def wrap(fn):
    _REGISTRY.register(name, Reward(name, fn, in_graph, settings, roles_of))
    return fn
  return wrap


def in_graph(name: str, settings: Type[Any] = NoSettings,
             roles_of: Callable[[Any], Tuple[str, ...]] = lambda settings: ()):
  """Registers ``fn(rollouts, roles, settings) -> jax.Array[B]``.

  ``roles_of(settings)`` names the roles whose params the reward reads (say, a reward model).
  """
  return _register(name, True, settings, roles_of)


def host(name: str):
  """Registers ``fn(prompts, completions, answers) -> np.ndarray[B]`` on decoded text."""
  return _register(name, False)


def get(name: str) -> Reward:
  return _REGISTRY.get(name)


def names() -> Tuple[str, ...]:
  return _REGISTRY.names()


def score_in_graph(terms: Sequence[RewardTerm], rollouts: Mapping[str, jax.Array],
                   roles: Mapping[str, RoleModel]) -> Dict[str, jax.Array]:
  scores = {}
  for term in terms:
    reward = term.reward
    if reward.in_graph:
      views = {name: roles[name] for name in term.roles}
      scores[term.name] = reward.fn(rollouts, views, term.settings).astype(jnp.float32)
  return scores


def score_host(terms: Sequence[RewardTerm], prompts: Sequence[str], completions: Sequence[str],
               answers: Sequence[str]) -> Dict[str, np.ndarray]:
  scores = {}
  for term in terms:
    if term.reward.in_graph:
      continue
    value = np.asarray(term.reward.fn(list(prompts), list(completions), list(answers)),
                       np.float32)
    if value.shape != (len(prompts),):
      raise ValueError(f"host reward {term.name!r} returned shape {value.shape}, "
                       f"expected ({len(prompts)},)")
    scores[term.name] = value
  return scores


def combine(terms: Sequence[RewardTerm], scores: Mapping[str, jax.Array]) -> jax.Array:
  """The weighted sum of per-source rewards that the advantage estimator sees."""
  return sum(t.weight * jnp.asarray(scores[t.name], jnp.float32) for t in terms)
