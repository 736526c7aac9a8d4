"""The typed, frozen config of a whole run: its roles, its phases and the recipe that runs them.

``rlalign/config.py`` builds it from a ConfigDict at the edge; everything else takes it typed.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Tuple

from rlalign.data.pipeline import DataConfig
from rlalign.metrics import WandbConfig
from rlalign.models.transformer import ModelConfig
from rlalign.parallel.mesh import MeshConfig
from rlalign.rewards import base as reward_base
from rlalign.rl import evaluation
from rlalign.rl.phases import ObjectiveConfig, PhaseConfig
from rlalign.rl import roles as roles_lib
from rlalign.rl.roles import RoleConfig, WeightsConfig
from rlalign.sampling.sampler import SamplingConfig


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  """What every phase shares: logging, evaluation and checkpoint cadence."""
  log_every: int = 10
  eval_every: int = 50        # 0: only at the end of each phase (and before the first)
  checkpoint_every: int = 50
  eval_batch_size: int = 256
  max_checkpoints: int = 2
  # Steps in a row whose update was skipped as non-finite before the run stops (0: never).
  max_consecutive_skips: int = 5
  # Resume although the config differs from the stored run's in more than its cadence or
  # length (rlalign/rl/config_changes.py); the change is recorded in the workdir.
  allow_config_change: bool = False
  wandb: WandbConfig = WandbConfig()
  # Save the frozen roles a phase reads (a reference, a reward model) in its checkpoints, so
  # one checkpoint resumes the phase; False rebuilds them from their sources on resume and
  # spares the disk (a 7B reference is 13 GB a checkpoint).
  checkpoint_frozen: bool = True
  # metric name -> in-graph reward used as the held-out judge of the policy's samples
  eval_judges: Tuple[Tuple[str, reward_base.RewardTerm], ...] = evaluation.DEFAULT_JUDGES

  def validate(self, prefix: str = "train") -> None:
    for name in ("log_every", "checkpoint_every", "eval_batch_size", "max_checkpoints"):
      if getattr(self, name) <= 0:
        raise ValueError(f"{prefix}.{name} must be positive, got {getattr(self, name)}")
    self.wandb.validate(f"{prefix}.wandb")
    for name in ("eval_every", "max_consecutive_skips"):
      if getattr(self, name) < 0:
        raise ValueError(f"{prefix}.{name} must be >= 0, got {getattr(self, name)}")
    for metric, term in self.eval_judges:
      if not term.reward.in_graph:
        raise ValueError(f"{prefix}.eval_judges.{metric}: {term.name!r} is a host reward; "
                         "judges run in-graph")
      if hasattr(term.settings, "validate"):
        term.settings.validate(f"{prefix}.eval_judges.{metric}")


@dataclasses.dataclass(frozen=True)
class SamplerLayoutConfig:
  """Where sampling runs. By default the sampler reads the policy's own arrays on the learner's
  mesh; ``separate`` gives it its own mesh shape and rules over the same devices (say,
  tensor-parallel decoding beside FSDP learning), resharding the policy into it every step."""
  separate: bool = False
  mesh: MeshConfig = MeshConfig()

  def validate(self, prefix: str = "sampler_layout") -> None:
    if self.separate:
      self.mesh.validate(f"{prefix}.mesh")


@dataclasses.dataclass(frozen=True)
class RecipeConfig:
  name: str
  settings: Any  # the registered recipe's own frozen dataclass


def default_roles() -> Tuple[Tuple[str, RoleConfig], ...]:
  """A trained policy and a frozen reference copied from it when RL starts."""
  return (("policy", RoleConfig()),
          ("reference", RoleConfig(weights=WeightsConfig(source="role", role="policy"),
                                   trainable=False)))


def default_phases() -> Tuple[Tuple[str, PhaseConfig], ...]:
  return (("rl", PhaseConfig()),)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  seed: int = 0
  model: ModelConfig = ModelConfig()  # every role's model unless the role names its own
  data: DataConfig = DataConfig()
  sampling: SamplingConfig = SamplingConfig()
  roles: Tuple[Tuple[str, RoleConfig], ...] = dataclasses.field(default_factory=default_roles)
  phases: Tuple[Tuple[str, PhaseConfig], ...] = dataclasses.field(
      default_factory=default_phases)
  recipe: RecipeConfig = RecipeConfig("sequence", None)
  train: LoopConfig = LoopConfig()
  mesh: MeshConfig = MeshConfig()
  sampler_layout: SamplerLayoutConfig = SamplerLayoutConfig()

  @property
  def role_configs(self) -> Dict[str, RoleConfig]:
    return dict(self.roles)

  @property
  def phase_configs(self) -> Dict[str, PhaseConfig]:
    return dict(self.phases)

  def role_model(self, name: str) -> ModelConfig:
    return self.role_configs[name].model_config(self.model)

  def validate(self) -> "ExperimentConfig":
    # The seed feeds jax.random.key and the data library's uint32 seeds.
    if not 0 <= self.seed < 2**31:
      raise ValueError(f"seed must be in [0, 2**31), got {self.seed}")
    self.model.validate("model")
    self.data.validate()
    self.sampling.validate("sampling")
    self.train.validate("train")
    self.mesh.validate("mesh")
    self.sampler_layout.validate("sampler_layout")
    roles = self.role_configs
    if not roles:
      raise ValueError("roles must declare at least one role")
    for name, role in self.roles:
      role.validate(f"roles.{name}", tuple(roles))
      if role.export_hf and roles_lib.hf_source(name, roles) is None:
        raise ValueError(f"roles.{name}.export_hf: its weights come from no Hugging Face "
                         "checkpoint (weights.source 'hf', or a role copied from one), whose "
                         "config and tokenizer an export writes beside them")
      role.model_config(self.model).validate(f"roles.{name}.model")
      if role.rules is not None:
        dataclasses.replace(self.mesh, rules=role.rules).validate(f"roles.{name}")
    for name, phase in self.phases:
      prefix = f"phases.{name}"
      phase.validate(prefix)
      for role in phase.trained_roles:
        if role not in roles:
          raise ValueError(f"{prefix}: objective {phase.objective.name!r} trains role "
                           f"{role!r}, which is not declared in roles ({sorted(roles)})")
        if not roles[role].trainable:
          raise ValueError(f"{prefix}: objective {phase.objective.name!r} trains role "
                           f"{role!r}, but roles.{role}.trainable is False")
      if phase.kind == "rl":
        for term in phase.rewards + phase.monitors:
          for role in term.roles:
            if role not in roles:
              raise ValueError(f"{prefix}.rewards.{term.key} reads role {role!r}, which is "
                               f"not declared in roles ({sorted(roles)})")
      if phase.adapter.lora_rank and self.sampler_layout.separate and phase.kind == "rl":
        raise ValueError(f"{prefix}.adapter.lora_rank > 0 with sampler_layout.separate is not "
                         "supported: the sampler would need the base weights in its layout "
                         "too")
    for metric, term in self.train.eval_judges:
      for role in term.roles:
        if role not in roles:
          raise ValueError(f"train.eval_judges.{metric} reads role {role!r}, which is not "
                           f"declared in roles ({sorted(roles)})")
    if self.recipe.settings is not None and hasattr(self.recipe.settings, "validate"):
      self.recipe.settings.validate("recipe", self)
    return self


def to_dict(cfg: Any) -> Any:
  """A JSON-ready view of a typed config, which ``config.from_config_dict`` reads back."""
  if isinstance(cfg, ObjectiveConfig):
    return {"name": cfg.name, **to_dict(cfg.hparams)}
  if isinstance(cfg, RecipeConfig):
    return {"name": cfg.name, **(to_dict(cfg.settings) if cfg.settings is not None else {})}
  if isinstance(cfg, reward_base.RewardTerm):
    out = {"name": cfg.name, "weight": cfg.weight, **to_dict(cfg.settings)}
    if cfg.transforms:
      out["transforms"] = [{"name": t.name, **to_dict(t.settings)} for t in cfg.transforms]
    if cfg.rows != "all":
      out["rows"] = cfg.rows
    return out
  if dataclasses.is_dataclass(cfg):
    return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
  if isinstance(cfg, tuple) and cfg and all(isinstance(v, reward_base.RewardTerm) for v in cfg):
    return {term.key: to_dict(term) for term in cfg}
  if isinstance(cfg, tuple) and cfg and all(
      isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str)
      and (dataclasses.is_dataclass(v[1])) for v in cfg):
    return {name: to_dict(value) for name, value in cfg}  # roles, phases, judges
  if isinstance(cfg, tuple):
    return [to_dict(v) for v in cfg]
  return cfg


def field_defaults(cfg: Any, prefix: str = "") -> Dict[str, Any]:
  """Every dotted key of ``to_dict(cfg)`` whose field has a default, mapped to that default
  (as ``to_dict`` writes it): what a key that a stored config lacks (a setting added to the
  code since) meant when that config was written."""
  join = lambda name: f"{prefix}.{name}" if prefix else name
  if isinstance(cfg, ObjectiveConfig):
    return field_defaults(cfg.hparams, prefix)
  if isinstance(cfg, RecipeConfig):
    return field_defaults(cfg.settings, prefix) if cfg.settings is not None else {}
  if isinstance(cfg, reward_base.RewardTerm):
    return {**field_defaults(cfg.settings, prefix), join("rows"): "all"}
  if dataclasses.is_dataclass(cfg):
    out = {}
    for f in dataclasses.fields(cfg):
      if f.default is not dataclasses.MISSING:
        out[join(f.name)] = to_dict(f.default)
      elif f.default_factory is not dataclasses.MISSING:
        out[join(f.name)] = to_dict(f.default_factory())
      out.update(field_defaults(getattr(cfg, f.name), join(f.name)))
    return out
  if isinstance(cfg, tuple) and cfg and all(isinstance(v, reward_base.RewardTerm) for v in cfg):
    return {k: v for term in cfg for k, v in field_defaults(term, join(term.key)).items()}
  if isinstance(cfg, tuple) and cfg and all(
      isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str)
      and dataclasses.is_dataclass(v[1]) for v in cfg):
    return {k: v for name, value in cfg for k, v in field_defaults(value, join(name)).items()}
  return {}
