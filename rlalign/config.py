"""Typed, frozen experiment configs, and their strict conversion from ConfigDicts.

Config files (``configs/*.py``) build ``ml_collections.ConfigDict`` objects; everything past
:func:`from_config_dict` sees only the frozen dataclasses below. The conversion rejects unknown
keys and wrong types with the dotted path of the key at fault, and ``validate`` checks values,
all before anything is traced or compiled.
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from typing import Any, Mapping, Optional, Tuple

from rlalign import objectives
from rlalign.data.pipeline import DataConfig
from rlalign.models.transformer import ModelConfig
from rlalign.parallel.mesh import MeshConfig
from rlalign.rl.iteration import RLConfig
from rlalign.rl.state import OptimizerConfig
from rlalign.sampling.sampler import SamplingConfig


@dataclasses.dataclass(frozen=True)
class WarmStartConfig:
  """Supervised fine-tuning on demonstrations before RL (0 steps skips it)."""
  steps: int = 0
  batch_size: int = 64
  optimizer: OptimizerConfig = OptimizerConfig(learning_rate=1e-3)

  def validate(self, prefix: str = "warm_start") -> None:
    if self.steps < 0:
      raise ValueError(f"{prefix}.steps must be >= 0, got {self.steps}")
    if self.batch_size <= 0:
      raise ValueError(f"{prefix}.batch_size must be positive, got {self.batch_size}")
    self.optimizer.validate(f"{prefix}.optimizer")


@dataclasses.dataclass(frozen=True)
class InitConfig:
  """Where the policy's first weights come from: random (the default) or a HF checkpoint."""
  hf_checkpoint: str = ""   # a local Hugging Face checkpoint directory
  export_hf: bool = True    # with hf_checkpoint: write the trained policy to <workdir>/hf

  def validate(self, prefix: str = "init") -> None:
    if self.hf_checkpoint and not os.path.isdir(self.hf_checkpoint):
      raise ValueError(f"{prefix}.hf_checkpoint: {self.hf_checkpoint!r} is not a directory")


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
  """Train LoRA adapters instead of every weight (``lora_rank`` 0: full fine-tuning).

  The warm start, if any, still trains every weight; RL then trains adapters on top of its
  result, which stays frozen and doubles as the reference, sharing the same arrays.
  """
  lora_rank: int = 0
  lora_alpha: float = 16.0
  lora_targets: str = r"layers/(q|k|v|o|gate|up|down)"

  def validate(self, prefix: str = "adapter") -> None:
    if self.lora_rank < 0:
      raise ValueError(f"{prefix}.lora_rank must be >= 0, got {self.lora_rank}")
    if self.lora_rank:
      self.lora().validate(prefix)

  def lora(self):
    from rlalign.models.lora import LoRAConfig
    return LoRAConfig(rank=self.lora_rank, alpha=self.lora_alpha,
                      target_regex=self.lora_targets)


@dataclasses.dataclass(frozen=True)
class RolesConfig:
  """Where the roles live. By default every role shares the learner's mesh and the sampler
  reads the policy's own arrays; ``separate_sampler`` gives sampling its own mesh shape and
  rules over the same devices (say, tensor-parallel decoding beside FSDP learning), at the
  cost of resharding the weights into it every step."""
  separate_sampler: bool = False
  sampler_mesh: MeshConfig = MeshConfig()

  def validate(self, prefix: str = "roles") -> None:
    if self.separate_sampler:
      self.sampler_mesh.validate(f"{prefix}.sampler_mesh")


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  steps: int = 100            # RL iterations
  log_every: int = 10
  eval_every: int = 50        # 0: only before and after RL
  checkpoint_every: int = 50
  eval_batch_size: int = 256
  max_checkpoints: int = 2

  def validate(self, prefix: str = "train") -> None:
    for name in ("steps", "log_every", "checkpoint_every", "eval_batch_size", "max_checkpoints"):
      if getattr(self, name) <= 0:
        raise ValueError(f"{prefix}.{name} must be positive, got {getattr(self, name)}")
    if self.eval_every < 0:
      raise ValueError(f"{prefix}.eval_every must be >= 0, got {self.eval_every}")


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
  name: str
  hparams: Any  # the registered objective's own frozen dataclass

  @property
  def objective(self) -> objectives.Objective:
    return objectives.get(self.name)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  seed: int = 0
  model: ModelConfig = ModelConfig()
  data: DataConfig = DataConfig()
  sampling: SamplingConfig = SamplingConfig()
  warm_start: WarmStartConfig = WarmStartConfig()
  rl: RLConfig = RLConfig()
  optimizer: OptimizerConfig = OptimizerConfig()
  objective: ObjectiveConfig = ObjectiveConfig("grpo", objectives.get("grpo").hparams())
  train: LoopConfig = LoopConfig()
  mesh: MeshConfig = MeshConfig()
  init: InitConfig = InitConfig()
  roles: RolesConfig = RolesConfig()
  adapter: AdapterConfig = AdapterConfig()

  def validate(self) -> "ExperimentConfig":
    self.model.validate("model")
    self.data.validate()
    self.sampling.validate("sampling")
    self.warm_start.validate("warm_start")
    self.rl.validate("rl")
    self.optimizer.validate("optimizer")
    if hasattr(self.objective.hparams, "validate"):
      self.objective.hparams.validate("objective")
    self.train.validate("train")
    self.mesh.validate("mesh")
    self.init.validate("init")
    self.roles.validate("roles")
    self.adapter.validate("adapter")
    if self.adapter.lora_rank and self.roles.separate_sampler:
      raise ValueError("adapter.lora_rank > 0 with roles.separate_sampler is not supported: "
                       "the sampler would need the base weights in its layout too")
    return self


class ConfigError(ValueError):
  """A config key that is unknown, missing or of the wrong type."""


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
  if dataclasses.is_dataclass(tp):
    return _dataclass_from(tp, value, path)
  if origin in (tuple, Tuple):
    args = typing.get_args(tp)
    if isinstance(value, Mapping):  # {"name": weight} for Tuple[Tuple[str, float], ...]
      value = list(value.items())
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
    return float(value)
  if tp in (int, bool, str):
    if type(value) is not tp:
      raise ConfigError(f"{path}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value
  raise ConfigError(f"{path}: unsupported config type {_type_name(tp)}")


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
    if cls is ExperimentConfig and name == "objective":
      kwargs[name] = _objective_from(v, key_path)
    else:
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
  return ObjectiveConfig(name, _dataclass_from(objective.hparams, given, path))


def from_config_dict(config: Any) -> ExperimentConfig:
  """Converts a ConfigDict (or plain dict) into a validated :class:`ExperimentConfig`."""
  return _dataclass_from(ExperimentConfig, config, "").validate()


def to_dict(cfg: Any) -> Any:
  """A JSON-ready view of a typed config, for logging it beside the run."""
  if isinstance(cfg, ObjectiveConfig):
    return {"name": cfg.name, **to_dict(cfg.hparams)}
  if dataclasses.is_dataclass(cfg):
    return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
  if isinstance(cfg, tuple):
    return [to_dict(v) for v in cfg]
  return cfg
