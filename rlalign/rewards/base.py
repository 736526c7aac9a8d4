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
import functools
from typing import Any, Callable, Dict, Mapping, NamedTuple, Optional, Sequence, Tuple, Type

import jax
import jax.numpy as jnp
import numpy as np

from rlalign import registry
from rlalign.rewards import transforms


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
  # A per-token reward returns (values [B, N], steps [B, N]): a score at the end of each step
  # of the completion (a process reward model), which becomes per-token advantages.
  per_token: bool = False
  # An in-graph reward whose program ends in token ids that only the host can read (a
  # verifier's judgement in a tokenizer whose digits are not single tokens): fn returns
  # (tokens [B, M], mask [B, M]), and host_finish(texts, settings) -> [B] scores their decoded
  # text. Settings whose ``finishes_on_host`` is False keep the reward wholly in-graph.
  host_finish: Optional[Callable[[Sequence[str], Any], np.ndarray]] = None


@dataclasses.dataclass(frozen=True)
class RewardTerm:
  """One weighted reward of a run: a registered reward with its typed settings, the source
  name its scores are logged and combined under (``source``; the reward's name by default, so
  one reward can appear twice, say two reward models), and the transforms applied to its
  scores before weighting (``rewards/transforms.py``)."""
  name: str
  weight: float = 1.0
  settings: Any = NoSettings()
  source: str = ""
  transforms: Tuple[Any, ...] = ()  # transforms.TransformSpec, applied in order
  # The rows it scores: "all", "labelled" (prompts with a reference answer) or "unlabelled"
  # (prompts without one); it scores 0 on the others. Easy-to-hard transfer rewards labelled
  # prompts by their answer and unlabelled ones by a learned verifier or a label-free reward.
  rows: str = "all"

  @property
  def key(self) -> str:
    return self.source or self.name

  @property
  def reward(self) -> Reward:
    return get(self.name)

  @property
  def roles(self) -> Tuple[str, ...]:
    return tuple(self.reward.roles_of(self.settings))

  @property
  def finishes_on_host(self) -> bool:
    """Its program's output is token ids that :func:`finish_on_host` turns into scores."""
    return (self.reward.host_finish is not None
            and bool(getattr(self.settings, "finishes_on_host", True)))

  def resolve(self, tokenizer: Any) -> "RewardTerm":
    """The term with settings that name text (a judge's template) turned into token ids."""
    if hasattr(self.settings, "resolve"):
      return dataclasses.replace(self, settings=self.settings.resolve(tokenizer))
    return self


ROW_CHOICES = ("all", "labelled", "unlabelled")


def labelled_rows(rollouts: Mapping[str, jax.Array]) -> jax.Array:
  """[B] bools: the rows whose prompt has a reference answer (a non-empty ``answer_mask``)."""
  return jnp.any(rollouts["answer_mask"], axis=1)


# scores[key + ROWS] holds the rows a term with ``rows`` scores, so ``combine`` zeroes the
# others again after the term's transforms (a sigmoid of 0 is not 0).
ROWS = "#rows"


def row_filter(rows: str, rollouts: Mapping[str, jax.Array]) -> Optional[jax.Array]:
  """[B] bools of the rows a term with ``rows`` scores, or None for every row."""
  if rows == "all":
    return None
  labelled = labelled_rows(rollouts)
  return labelled if rows == "labelled" else ~labelled


def check_terms(terms: Sequence[RewardTerm], prefix: str, group_size: int = 0) -> None:
  """Each term's reward exists and its settings and transforms are valid; sources are unique.
  ``group_size`` > 0 checks that groupwise transforms (group_norm) have groups to work on."""
  seen = set()
  for term in terms:
    where = f"{prefix}.{term.key}"
    if term.key in seen:
      raise ValueError(f"{where}: two reward terms share the source {term.key!r}; name them "
                       f"apart, e.g. {{'{term.key}_2': {{'name': {term.name!r}, ...}}}}")
    seen.add(term.key)
    term.reward  # raises for an unknown name
    if term.rows not in ROW_CHOICES:
      raise ValueError(f"{where}.rows must be one of {ROW_CHOICES}, got {term.rows!r}")
    if term.rows != "all" and (not term.reward.in_graph or term.finishes_on_host):
      raise ValueError(f"{where}.rows={term.rows!r}: only in-graph rewards choose their rows; "
                       f"{term.name!r} is read on the host")
    if hasattr(term.settings, "validate"):
      term.settings.validate(where)
    if term.reward.per_token and term.transforms:
      raise ValueError(f"{where}: {term.name!r} scores steps, which take no transforms (the "
                       "step rewards are normalised within each group as they become "
                       "per-token advantages)")
    for i, spec in enumerate(term.transforms):
      spec.transform  # raises for an unknown name
      if hasattr(spec.settings, "validate"):
        spec.settings.validate(f"{where}.transforms[{i}]")
      if spec.transform.groupwise and 0 < group_size < 2:
        raise ValueError(f"{where}.transforms[{i}]: {spec.name!r} normalises within a prompt's "
                         f"group, which needs group_size >= 2, got {group_size}")


def resolve_terms(terms: Sequence[RewardTerm], tokenizer: Any) -> Tuple[RewardTerm, ...]:
  return tuple(term.resolve(tokenizer) for term in terms)


_REGISTRY: registry.Registry[Reward] = registry.Registry("reward")


def _register(name: str, in_graph: bool, settings: Type[Any] = NoSettings,
              roles_of: Callable[[Any], Tuple[str, ...]] = lambda settings: (),
              per_token: bool = False, host_finish: Optional[Callable] = None):
  def wrap(fn):
    _REGISTRY.register(name, Reward(name, fn, in_graph, settings, roles_of, per_token,
                                    host_finish))
    return fn
  return wrap


def in_graph(name: str, settings: Type[Any] = NoSettings,
             roles_of: Callable[[Any], Tuple[str, ...]] = lambda settings: (),
             per_token: bool = False, host_finish: Optional[Callable] = None):
  """Registers ``fn(rollouts, roles, settings) -> jax.Array[B]``.

  ``roles_of(settings)`` names the roles whose params the reward reads (say, a reward model).
  With ``per_token`` the function returns ``(values [B, N], steps [B, N])`` instead: scores
  at the ends of the completion's steps (see ``rewards/process.py``). With ``host_finish``
  (and settings that ask for it) it returns ``(tokens [B, M], mask [B, M])``, which the host
  decodes and scores (:func:`finish_on_host`).
  """
  return _register(name, True, settings, roles_of, per_token, host_finish)


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
      out = reward.fn(rollouts, views, term.settings)
      keep = row_filter(term.rows, rollouts)
      if reward.per_token:
        values, steps = out
        if keep is not None:
          values = jnp.where(keep[:, None], values, 0.0)
        scores[term.key] = {"values": values.astype(jnp.float32), "steps": steps.astype(bool)}
      elif term.finishes_on_host:
        tokens, mask = out
        scores[term.key] = {"finish_tokens": tokens, "finish_mask": mask.astype(bool)}
      else:
        out = out.astype(jnp.float32)
        scores[term.key] = out if keep is None else jnp.where(keep, out, 0.0)
        if keep is not None:
          scores[term.key + ROWS] = keep
  return scores


def sequence_starts(tokens: jax.Array, valid: jax.Array, pattern: Sequence[int]) -> jax.Array:
  """[B, N] bools: where ``pattern`` (a static, non-empty id sequence) begins in each row,
  matching only positions where ``valid`` holds."""
  B, N = tokens.shape
  L = len(pattern)
  padded = jnp.pad(jnp.where(valid, tokens, -1), ((0, 0), (0, L)), constant_values=-1)
  windows = padded[:, jnp.arange(N)[:, None] + jnp.arange(L)[None, :]]  # [B, N, L]
  return jnp.all(windows == jnp.asarray(pattern, tokens.dtype), axis=-1)


def finish_on_host(terms: Sequence[RewardTerm], scores: Mapping[str, Any],
                   decode: Callable[[np.ndarray], str]) -> Dict[str, np.ndarray]:
  """float32 [B] scores of the host-finished terms, from the token ids their programs left in
  ``scores`` (host arrays); ``decode`` turns one row's real ids into text."""
  out = {}
  for term in terms:
    if term.finishes_on_host:
      ids = scores[term.key]
      tokens, mask = np.asarray(ids["finish_tokens"]), np.asarray(ids["finish_mask"], bool)
      texts = [decode(row[m]) for row, m in zip(tokens, mask)]
      out[term.key] = np.asarray(term.reward.host_finish(texts, term.settings), np.float32)
  return out


def as_sequence(term: RewardTerm, value: Any) -> jax.Array:
  """[B] one score per completion: a per-token term's steps reduced by its settings'
  ``sequence_aggregate`` (the minimum by default)."""
  if not isinstance(value, Mapping):
    return jnp.asarray(value, jnp.float32)
  from rlalign.rewards import process  # the step aggregates live with the step rewards
  how = getattr(term.settings, "sequence_aggregate", "min")
  return process.aggregate_steps(value["values"], value["steps"], how)


def sequence_scores(terms: Sequence[RewardTerm], scores: Mapping[str, Any]
                    ) -> Dict[str, jax.Array]:
  """Every source's [B] scores, per-token ones reduced (for metrics and group selection)."""
  by_key = {t.key: t for t in terms}
  return {k: as_sequence(by_key[k], v) if k in by_key else v for k, v in scores.items()
          if not k.endswith(ROWS)}


def combine_steps(terms: Sequence[RewardTerm], scores: Mapping[str, Any]
                  ) -> Optional[Tuple[jax.Array, jax.Array]]:
  """The weighted sum of the per-token terms' step rewards [B, N] and where any step ends,
  or None when no term is per-token."""
  parts = [(t.weight, scores[t.key]) for t in terms if isinstance(scores[t.key], Mapping)]
  if not parts:
    return None
  values = sum(w * v["values"] for w, v in parts)
  steps = functools.reduce(jnp.logical_or, [v["steps"] for _, v in parts])
  return values, steps


def score_host(terms: Sequence[RewardTerm], prompts: Sequence[str], completions: Sequence[str],
               answers: Sequence[str]) -> Dict[str, np.ndarray]:
  scores = {}
  for term in terms:
    if term.reward.in_graph:
      continue
    value = np.asarray(term.reward.fn(list(prompts), list(completions), list(answers)),
                       np.float32)
    if value.shape != (len(prompts),):
      raise ValueError(f"host reward {term.key!r} returned shape {value.shape}, "
                       f"expected ({len(prompts)},)")
    scores[term.key] = value
  return scores


def combine(terms: Sequence[RewardTerm], scores: Mapping[str, jax.Array], *,
            group_size: int = 1,
            reference: Optional[Mapping[str, jax.Array]] = None) -> jax.Array:
  """The weighted sum of per-source rewards that the advantage estimator sees, each source
  transformed first (GDPO's per-source normalisation, LSC, clipping). ``group_size`` is the
  number of consecutive rows sampled from one prompt; ``reference`` maps a source to the
  per-row reference reward r_ref(x) that LSC needs."""
  total = 0.0
  for t in terms:
    if isinstance(scores[t.key], Mapping):  # step rewards: per-token advantages instead
      continue
    value = jnp.asarray(scores[t.key], jnp.float32)
    context = transforms.Context(group_size, (reference or {}).get(t.key))
    for spec in t.transforms:
      value = transforms.apply(spec, value, context)
    if t.key + ROWS in scores:  # the rows the term does not score stay at 0
      value = jnp.where(scores[t.key + ROWS], value, 0.0)
    total = total + t.weight * value
  return total
