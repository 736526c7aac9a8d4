"""The strict conversion of ConfigDicts into typed, frozen experiment configs.

Config files (``configs/*.py``) build ``ml_collections.ConfigDict`` objects; everything past
:func:`from_config_dict` sees only frozen dataclasses (``rlalign/rl/experiment.py`` and the
sections it holds). The conversion rejects unknown keys and wrong types with the dotted path of
the key at fault, and ``validate`` checks values, all before anything is traced or compiled.

Registered things pick their own typed settings by name: an objective's hparams
(``objective.name``), a reward's settings (``rewards``), a recipe's (``recipe.name``).
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import types
import typing
from typing import Any, Mapping, Tuple

from rlalign import objectives, recipes, rewards
from rlalign.rewards import transforms as reward_transforms
from rlalign.rewards.base import RewardTerm
from rlalign.rewards.transforms import TransformSpec
from rlalign.rl.experiment import (ExperimentConfig, LoopConfig, RecipeConfig,
                                   SamplerLayoutConfig, to_dict)
from rlalign.rl.phases import ObjectiveConfig, PhaseConfig
from rlalign.rl.roles import AdapterConfig, RoleConfig, WeightsConfig

__all__ = ["AdapterConfig", "ConfigError", "ExperimentConfig", "LoopConfig", "ObjectiveConfig",
           "PhaseConfig", "RecipeConfig", "RoleConfig", "SamplerLayoutConfig", "WeightsConfig",
           "from_config_dict", "to_dict"]


class ConfigError(ValueError):
  """A config key that is unknown, missing or of the wrong type."""


# The configs that ship in the package (the repository's ``configs/`` links here).
CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def resolve_config_path(path: str) -> str:
  """``path`` when that file exists; else the shipped config it names by file name, with or
  without ``.py`` (``grpo_addition``), so an installed rlalign needs no checkout. Unresolved
  names come back unchanged, for the caller's "no such file"."""
  if os.path.isfile(path) or os.sep in path or (os.altsep and os.altsep in path):
    return path
  packaged = os.path.join(CONFIG_DIR, path if path.endswith(".py") else path + ".py")
  return packaged if os.path.isfile(packaged) else path


def shipped_configs() -> list:
  """The names of the configs that ship in the package."""
  return sorted(n[:-3] for n in os.listdir(CONFIG_DIR)
                if n.endswith(".py") and not n.startswith("_"))


def _type_name(tp) -> str:
  return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, path: str) -> Any:
  """Checks ``value`` against the annotation ``tp`` and converts containers to frozen ones."""
  origin = typing.get_origin(tp)
  if origin in (typing.Union, types.UnionType):
    options = typing.get_args(tp)
    if value is None and type(None) in options:
      return None
    errors = []
    for option in options:
      if option is type(None):
        continue
      try:
        return _convert(value, option, path)
      except ConfigError as e:
        errors.append(str(e))
    raise ConfigError(errors[0] if errors else f"{path}: unexpected None")
  if tp is ObjectiveConfig:
    return _objective_from(value, path)
  if tp is RecipeConfig:
    return _recipe_from(value, path)
  if tp == Tuple[RewardTerm, ...]:
    return rewards_from(value, path)
  if tp == Tuple[Tuple[str, RewardTerm], ...]:
    # A judge's scores are keyed by its metric, so its source stays the reward's name.
    return tuple((metric, _reward_from(metric_value, path, metric, named_source=False))
                 for metric, metric_value in _as_dict(value, path).items())
  if dataclasses.is_dataclass(tp):
    return _dataclass_from(tp, value, path)
  if origin in (tuple, Tuple):
    args = typing.get_args(tp)
    if isinstance(value, Mapping) and _is_named_tuple_of(args):
      # {name: value} for Tuple[Tuple[str, X], ...]: roles, phases, mesh rules.
      item = typing.get_args(args[0])[1]
      return tuple((name, _convert(v, item, f"{path}.{name}"))
                   for name, v in _as_dict(value, path).items())
    if not isinstance(value, (list, tuple)):
      raise ConfigError(f"{path}: expected a sequence, got {type(value).__name__} {value!r}")
    if len(args) == 2 and args[1] is Ellipsis:
      return tuple(_convert(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
    if len(args) != len(value):
      raise ConfigError(f"{path}: expected {len(args)} items, got {len(value)}")
    return tuple(_convert(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
  if tp is Any:
    return value
  if tp is float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise ConfigError(f"{path}: expected float, got {type(value).__name__} {value!r}")
    # Every float setting is a finite number: nan passes every "<= 0" check a field makes.
    if not math.isfinite(value):
      raise ConfigError(f"{path}: expected a finite float, got {value!r}")
    return float(value)
  if tp in (int, bool, str):
    if type(value) is not tp:
      raise ConfigError(f"{path}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value
  raise ConfigError(f"{path}: unsupported config type {_type_name(tp)}")


def _is_named_tuple_of(args) -> bool:
  """Whether ``Tuple[args]`` is ``Tuple[Tuple[str, X], ...]``."""
  if len(args) != 2 or args[1] is not Ellipsis:
    return False
  inner = typing.get_args(args[0])
  return typing.get_origin(args[0]) in (tuple, Tuple) and len(inner) == 2 and inner[0] is str


def _as_dict(value: Any, path: str) -> dict:
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  if not isinstance(value, Mapping):
    raise ConfigError(f"{path}: expected a mapping of keys, got {type(value).__name__}")
  return dict(value)


def _dataclass_from(cls, value: Any, path: str):
  if isinstance(value, cls):
    return value
  given = _as_dict(value, path or "config")
  fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
  hints = typing.get_type_hints(cls)
  unknown = sorted(set(given) - set(fields))
  if unknown:
    where = f"{path}." if path else ""
    raise ConfigError(f"unknown config key '{where}{unknown[0]}'; "
                      f"{path or 'the config'} accepts {sorted(fields)}")
  kwargs = {}
  for name, v in given.items():
    key_path = f"{path}.{name}" if path else name
    kwargs[name] = _convert(v, hints[name], key_path)
  missing = [n for n, f in fields.items() if n not in kwargs
             and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
  if missing:
    raise ConfigError(f"{path or 'config'}: missing required key {missing[0]!r}")
  return cls(**kwargs)


def _objective_from(value: Any, path: str) -> ObjectiveConfig:
  given = _as_dict(value, path)
  name = given.pop("name", None)
  if not isinstance(name, str):
    raise ConfigError(f"{path}.name: expected the name of a registered objective, one of "
                      f"{list(objectives.names())}, got {name!r}")
  try:
    objective = objectives.get(name)
  except KeyError as e:
    raise ConfigError(f"{path}.name: {e.args[0]}") from None
  # A command-line switch of objective leaves the file's settings of the old one behind: keys
  # another registered objective takes are dropped, with a note. A key no objective knows is
  # still an error.
  own = {f.name for f in dataclasses.fields(objective.hparams)}
  others = {f.name for n in objectives.names() if n != name
            for f in dataclasses.fields(objectives.get(n).hparams)}
  dropped = sorted(k for k in given if k not in own and k in others)
  if dropped:
    print(f"config note: {path}.name={name!r} takes no {', '.join(dropped)}; ignored",
          file=sys.stderr)
  given = {k: v for k, v in given.items() if k not in dropped}
  return ObjectiveConfig(name, _dataclass_from(objective.hparams, given, path))


def _recipe_from(value: Any, path: str) -> RecipeConfig:
  given = _as_dict(value, path)
  name = given.pop("name", "sequence")
  try:
    recipe = recipes.get(name)
  except KeyError as e:
    raise ConfigError(f"{path}.name: {e.args[0]}") from None
  return RecipeConfig(name, _dataclass_from(recipe.settings, given, path))


def _reward_from(value: Any, path: str, key: str, name: str = "",
                 named_source: bool = True) -> RewardTerm:
  """A reward term from ``weight``, ``"name"`` or ``{"name"?, "weight"?, **settings}``."""
  where = f"{path}.{key}"
  weight, transforms, rows = 1.0, (), "all"
  if isinstance(value, str) and name:
    raise ConfigError(f"{where}: expected a weight or a mapping of settings, got str {value!r}")
  if isinstance(value, str):
    name, given = value, {}
  elif isinstance(value, (int, float)) and not isinstance(value, bool):
    weight, given = float(value), {}
  else:
    given = _as_dict(value, where)
    name = given.pop("name", name)
    weight = _convert(given.pop("weight", 1.0), float, f"{where}.weight")
    transforms = _transforms_from(given.pop("transforms", ()), f"{where}.transforms")
    rows = _convert(given.pop("rows", "all"), str, f"{where}.rows")
  if not name:
    raise ConfigError(f"{where}: name the reward, e.g. {{'name': 'exact_match'}}")
  try:
    reward = rewards.get(name)
  except KeyError as e:
    raise ConfigError(f"{where}: {e.args[0]}") from None
  # The key is the source's name: {"rm_a": {"name": "reward_model", ...}} logs reward/rm_a.
  source = key if named_source and key != name else ""
  return RewardTerm(name, weight, _dataclass_from(reward.settings, given, where), source,
                    transforms, rows)


def _transforms_from(value: Any, path: str) -> Tuple[TransformSpec, ...]:
  """``("group_norm", {"name": "clip", "low": 0.0}, ...)``, applied in order."""
  if isinstance(value, (str, Mapping)) or hasattr(value, "to_dict"):
    value = (value,)
  if not isinstance(value, (list, tuple)):
    raise ConfigError(f"{path}: expected a sequence of transforms, got {type(value).__name__}")
  specs = []
  for i, item in enumerate(value):
    if isinstance(item, TransformSpec):
      specs.append(item)
      continue
    where = f"{path}[{i}]"
    given = {"name": item} if isinstance(item, str) else _as_dict(item, where)
    name = given.pop("name", None)
    try:
      transform = reward_transforms.get(name)
    except KeyError as e:
      raise ConfigError(f"{where}.name: {e.args[0]}") from None
    specs.append(TransformSpec(name, _dataclass_from(transform.settings, given, where)))
  return tuple(specs)


def rewards_from(value: Any, path: str) -> Tuple[RewardTerm, ...]:
  """``{"reward": weight}`` or ``{"reward": {"weight": w, **settings}}``, one entry a reward."""
  if isinstance(value, (list, tuple)) and all(isinstance(v, RewardTerm) for v in value):
    return tuple(value)
  if isinstance(value, (list, tuple)):  # ((name, weight), ...)
    value = dict(value)
  return tuple(_reward_from(v, path, k, name=k) for k, v in _as_dict(value, path).items())


def from_config_dict(config: Any) -> ExperimentConfig:
  """Converts a ConfigDict (or plain dict) into a validated :class:`ExperimentConfig`."""
  return _dataclass_from(ExperimentConfig, config, "").validate()
