"""The train state of every trained role, and the optimizers that update it.

The state is a plain dict pytree, so orbax, sharding helpers and ``jax.tree`` treat it without
registration::

  {"step": int32[], "roles": {role: {"params": ..., "opt_state": ...}}}

It holds the roles a phase trains; frozen roles (a reference, a reward model) are separate,
non-donated arguments. The state is donated to every step.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping

import jax.numpy as jnp
import optax

TrainState = Dict[str, Any]


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  learning_rate: float = 1e-4
  warmup_steps: int = 0
  weight_decay: float = 0.0
  b1: float = 0.9
  b2: float = 0.99
  max_grad_norm: float = 1.0  # 0 disables clipping

  def validate(self, prefix: str = "optimizer") -> None:
    if not self.learning_rate > 0:  # also rejects nan
      raise ValueError(f"{prefix}.learning_rate must be positive, got {self.learning_rate}")
    if self.warmup_steps < 0:
      raise ValueError(f"{prefix}.warmup_steps must be >= 0, got {self.warmup_steps}")
    for name in ("b1", "b2"):
      if not 0.0 <= getattr(self, name) < 1.0:
        raise ValueError(f"{prefix}.{name} must be in [0, 1), got {getattr(self, name)}")
    if self.max_grad_norm < 0 or self.weight_decay < 0:
      raise ValueError(f"{prefix}.max_grad_norm and {prefix}.weight_decay must be >= 0")


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
  """AdamW with linear warmup, after global-norm clipping. Counts optimizer updates."""
  schedule = (optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps)
              if cfg.warmup_steps else cfg.learning_rate)
  parts = [optax.clip_by_global_norm(cfg.max_grad_norm)] if cfg.max_grad_norm else []
  parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay))
  return optax.chain(*parts)


def init_state(params: Mapping[str, Any],
               optimizers: Mapping[str, optax.GradientTransformation]) -> TrainState:
  """Step 0 with fresh optimizer state for each trained role's params."""
  return {"step": jnp.zeros((), jnp.int32),
          "roles": {name: {"params": p, "opt_state": optimizers[name].init(p)}
                    for name, p in params.items()}}


def params_of(state: TrainState) -> Dict[str, Any]:
  return {name: role["params"] for name, role in state["roles"].items()}


def apply_gradients(state: TrainState, grads: Mapping[str, Any],
                    optimizers: Mapping[str, optax.GradientTransformation]) -> TrainState:
  """One optimizer update of every role in ``grads``, each with its own optimizer."""
  roles = dict(state["roles"])
  for name, g in grads.items():
    role = roles[name]
    updates, opt_state = optimizers[name].update(g, role["opt_state"], role["params"])
    roles[name] = {"params": optax.apply_updates(role["params"], updates),
                   "opt_state": opt_state}
  return {**state, "roles": roles}
