"""Transforms of one reward source's scores, applied before the sources are weighted and
summed (``RewardTerm.transforms``, in order).

  clip        clip(r, low, high)
  sigmoid     sigmoid(r): a verifier's logit as its probability that the completion is right
  group_norm  (r - mean_group) / (std_group + eps) over each prompt's group: GDPO's per-source
              normalisation (Liu et al. 2026), so a dense source cannot drown a sparse one
  batch_norm  the same over the whole batch
  lsc         log sigmoid(r - r_ref(x)) (Wang et al. 2024, "Transforming and combining
              rewards"): r_ref(x) is a quantile of the reward of the reference policy's own
              samples of prompt x, drawn in-graph each step; the transform saturates once a
              completion beats the reference, so pushing the proxy further earns little

A transform is ``fn(values [B], settings, context) -> [B]``: pure, in-graph, of static shape.
In a config, a transform is a name or ``{"name": ..., **settings}``:

  rewards={"reward_model": {"role": "rm", "transforms": ("group_norm",)},
           "stopped": {"weight": 0.1, "transforms": ({"name": "clip", "low": 0.0},)}}
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple, Optional, Tuple, Type

import jax
import jax.numpy as jnp

from rlalign import registry


class Context(NamedTuple):
  group_size: int                  # consecutive rows sampled from one prompt
  reference: Optional[jax.Array]   # [B] r_ref(x) of each row's prompt, for lsc


@dataclasses.dataclass(frozen=True)
class Transform:
  name: str
  fn: Callable[[jax.Array, Any, Context], jax.Array]
  settings: Type[Any]
  groupwise: bool = False  # needs groups of two or more samples per prompt


@dataclasses.dataclass(frozen=True)
class TransformSpec:
  """One transform of a term, with its typed settings."""
  name: str
  settings: Any

  @property
  def transform(self) -> Transform:
    return get(self.name)


_REGISTRY: registry.Registry[Transform] = registry.Registry("reward transform")


def register(name: str, settings: Type[Any], groupwise: bool = False):
  def wrap(fn):
    _REGISTRY.register(name, Transform(name, fn, settings, groupwise))
    return fn
  return wrap


def get(name: str) -> Transform:
  return _REGISTRY.get(name)


def names() -> Tuple[str, ...]:
  return _REGISTRY.names()


def apply(spec: TransformSpec, values: jax.Array, context: Context) -> jax.Array:
  return spec.transform.fn(values, spec.settings, context)


def _finite(prefix: str, **values: float) -> None:
  for name, value in values.items():
    if not math.isfinite(value):
      raise ValueError(f"{prefix}.{name} must be finite, got {value}")


@dataclasses.dataclass(frozen=True)
class ClipSettings:
  low: float = -1.0
  high: float = 1.0

  def validate(self, prefix: str) -> None:
    _finite(prefix, low=self.low, high=self.high)
    if self.low >= self.high:
      raise ValueError(f"{prefix}: low ({self.low}) must be below high ({self.high})")


@register("clip", ClipSettings)
def clip(values: jax.Array, settings: ClipSettings, context: Context) -> jax.Array:
  del context
  return jnp.clip(values, settings.low, settings.high)


@dataclasses.dataclass(frozen=True)
class SigmoidSettings:
  def validate(self, prefix: str) -> None:
    del prefix


@register("sigmoid", SigmoidSettings)
def sigmoid(values: jax.Array, settings: SigmoidSettings, context: Context) -> jax.Array:
  del settings, context
  return jax.nn.sigmoid(values)


@dataclasses.dataclass(frozen=True)
class NormSettings:
  eps: float = 1e-6
  scale: bool = True  # divide by the std; False only centres (Dr. GRPO's choice)

  def validate(self, prefix: str) -> None:
    _finite(prefix, eps=self.eps)
    if self.eps <= 0:
      raise ValueError(f"{prefix}.eps must be positive, got {self.eps}")


def _normalise(x: jax.Array, settings: NormSettings) -> jax.Array:
  centred = x - x.mean(axis=-1, keepdims=True)
  if not settings.scale:
    return centred
  return centred / (x.std(axis=-1, keepdims=True) + settings.eps)


@register("group_norm", NormSettings, groupwise=True)
def group_norm(values: jax.Array, settings: NormSettings, context: Context) -> jax.Array:
  return _normalise(values.reshape(-1, context.group_size), settings).reshape(-1)


@register("batch_norm", NormSettings)
def batch_norm(values: jax.Array, settings: NormSettings, context: Context) -> jax.Array:
  del context
  return _normalise(values, settings)


@dataclasses.dataclass(frozen=True)
class LSCSettings:
  quantile: float = 0.85  # of the reference's rewards for the prompt: r_ref(x)
  samples: int = 4        # reference completions per prompt, sampled each step

  def validate(self, prefix: str) -> None:
    _finite(prefix, quantile=self.quantile)
    if not 0.0 <= self.quantile <= 1.0:
      raise ValueError(f"{prefix}.quantile must be in [0, 1], got {self.quantile}")
    if self.samples < 1:
      raise ValueError(f"{prefix}.samples must be >= 1, got {self.samples}")


@register("lsc", LSCSettings)
def lsc(values: jax.Array, settings: LSCSettings, context: Context) -> jax.Array:
  del settings
  if context.reference is None:
    raise ValueError("the lsc transform needs the reference's rewards r_ref(x); the iteration "
                     "samples them when a term has it")
  return jax.nn.log_sigmoid(values - context.reference)


def reference_quantile(reference_scores: jax.Array, settings: LSCSettings) -> jax.Array:
  """[P, samples] rewards of the reference's samples of each prompt -> r_ref(x), [P]."""
  return jnp.quantile(reference_scores, settings.quantile, axis=1)


def lsc_settings(term_transforms) -> Optional[LSCSettings]:
  """The settings of a term's lsc transform, or None."""
  for spec in term_transforms:
    if spec.name == "lsc":
      return spec.settings
  return None
