"""Roles: the named models of a run (policy, reference, critic, reward_model, verifier, ...).

A role is declared in config (:class:`RoleConfig`): its model, where its weights come from,
whether it trains, its optimizer. Inside a compiled step a role is a :class:`RoleSpec`, the
static part (model config, optimizer, LoRA), plus params passed as arguments: trained roles in
the donated train state, frozen ones beside it. No weight is ever closed over as a constant.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Optional, Tuple

import optax

from rlalign.models import lora as lora_lib
from rlalign.models import transformer as tfm
from rlalign.rl.state import OptimizerConfig

WEIGHT_SOURCES = ("random", "hf", "role", "checkpoint")


@dataclasses.dataclass(frozen=True)
class WeightsConfig:
  """Where a role's first weights come from.

  random      fresh init from the run's seed
  hf          a local Hugging Face checkpoint directory (``path``), including an earlier
              run's ``<workdir>/hf`` export
  role        a copy of another role (``role``), taken when the first phase that uses this
              role starts: a reference copied from the policy after its warm start
  checkpoint  a role saved in an earlier run's phase checkpoints (``path`` is that phase's
              checkpoint directory, ``<workdir>/checkpoints/<phase>``; ``role`` the role's
              name there, default this role's)
  """
  source: str = "random"
  path: str = ""
  role: str = ""

  def validate(self, prefix: str) -> None:
    if self.source not in WEIGHT_SOURCES:
      raise ValueError(f"{prefix}.source must be one of {WEIGHT_SOURCES}, got {self.source!r}")
    if self.source in ("hf", "checkpoint") and not self.path:
      raise ValueError(f"{prefix}.path is required with source={self.source!r}")
    if self.source == "role" and not self.role:
      raise ValueError(f"{prefix}.role must name the role to copy (source='role')")


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
  """Train LoRA adapters instead of every weight (``lora_rank`` 0: full fine-tuning). The
  role's weights as a phase starts stay frozen under the adapters, and double as the
  reference when the reference is a copy of them (the same arrays). When the phase ends, the
  role's weights are the merged ones."""
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
class RoleConfig:
  """One named model of a run."""
  # None: the run's top-level ``model``. ``heads`` picks the LM head, the scalar head or both.
  model: Optional[tfm.ModelConfig] = None
  heads: Tuple[str, ...] = ()  # () keeps the model's heads
  scalar_heads: int = 0        # K > 1: K reward heads on one backbone; 0 keeps the model's
  weights: WeightsConfig = WeightsConfig()
  trainable: bool = True
  optimizer: OptimizerConfig = OptimizerConfig()
  adapter: AdapterConfig = AdapterConfig()  # LoRA in every phase that trains this role
  export_hf: bool = False  # write the role to <workdir>/hf/<role> at the end (HF sources)
  # The role's layout: logical-axis rules for its params on the run's mesh (say, a small
  # reward model replicated beside an FSDP policy). None: the mesh's own rules.
  rules: Optional[Tuple[Tuple[str, Tuple[str, ...]], ...]] = None

  def validate(self, prefix: str, names: Tuple[str, ...] = ()) -> None:
    if self.model is not None:
      self.model.validate(f"{prefix}.model")
    self.weights.validate(f"{prefix}.weights")
    if self.weights.source == "role" and names and self.weights.role not in names:
      raise ValueError(f"{prefix}.weights.role {self.weights.role!r} is not a role of this "
                       f"run; roles: {list(names)}")
    self.optimizer.validate(f"{prefix}.optimizer")
    self.adapter.validate(f"{prefix}.adapter")
    if self.scalar_heads < 0:
      raise ValueError(f"{prefix}.scalar_heads must be >= 0 (0 keeps the model's), got "
                       f"{self.scalar_heads}")

  def model_config(self, default: tfm.ModelConfig) -> tfm.ModelConfig:
    model = self.model or default
    if self.heads:
      model = dataclasses.replace(model, heads=self.heads)
    if self.scalar_heads:
      model = dataclasses.replace(model, scalar_heads=self.scalar_heads)
    return model


@dataclasses.dataclass(frozen=True)
class RoleSpec:
  """What a compiled step knows of a role: everything but its params."""
  model: tfm.ModelConfig
  optimizer: Optional[optax.GradientTransformation] = None  # None: frozen in this step
  # Train LoRA adapters: the trained params are adapters over frozen[role], the base weights.
  adapter: Optional[lora_lib.LoRAConfig] = None

  @property
  def trained(self) -> bool:
    return self.optimizer is not None


RoleSpecs = Mapping[str, RoleSpec]


def hf_source(name: str, roles: Mapping[str, "RoleConfig"]) -> Optional[str]:
  """The Hugging Face directory a role's weights come from, directly or through the roles it
  is copied from; None when they come from elsewhere (the tokenizer and config an export
  writes beside the weights are that directory's)."""
  seen = set()
  while name in roles and name not in seen:
    seen.add(name)
    weights = roles[name].weights
    if weights.source == "hf":
      return weights.path
    if weights.source != "role":
      return None
    name = weights.role
  return None


def effective_params(name: str, trained: Mapping[str, Any], frozen: Mapping[str, Any],
                     roles: RoleSpecs) -> Any:
  """A role's weights inside a step: trained params, frozen ones, or base + merged adapters."""
  spec = roles[name]
  if name in trained:
    if spec.adapter is not None:
      return lora_lib.merge(frozen[name], trained[name], spec.adapter)
    return trained[name]
  if name not in frozen:
    raise KeyError(f"role {name!r} is neither trained nor given to this step; given: "
                   f"{sorted(set(trained) | set(frozen))}")
  return frozen[name]


def optimizers(roles: RoleSpecs) -> Dict[str, optax.GradientTransformation]:
  return {name: spec.optimizer for name, spec in roles.items() if spec.trained}
