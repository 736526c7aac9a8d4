"""The recipe interface and its registry.

A recipe is a small module: a typed config of its own and ``run(cfg, workdir) -> summary``,
a loop over phases or iterations of one or more roles, built from the public builders of
``rlalign/rl/runtime.py`` (mesh, data, writer, checkpointers, role states, phases). It never
copies the driver: the loop, metrics, evaluation and checkpoints are the runtime's.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Optional, Tuple, Type

from rlalign import registry
from rlalign.rl.experiment import ExperimentConfig


@dataclasses.dataclass(frozen=True)
class Recipe:
  name: str
  settings: Type[Any]  # a frozen dataclass; validate(prefix, cfg) may check it against the run
  run: Callable[[ExperimentConfig, str], Dict[str, Any]]
  # ``--dry_run`` of a recipe with a program of its own (several roles in one step): returns
  # ``rl.dry_run.RecipeProgram``; None dry-runs the config's first RL phase.
  dry_run: Optional[Callable[[ExperimentConfig], Any]] = None


def check_phases(prefix: str, cfg: ExperimentConfig, phase: str, before: Tuple[str, ...]):
  """A one-RL-phase recipe's settings against the run: ``phase`` (``<prefix>.phase``) is an
  RL phase of the config and ``before`` names phases of it; returns that phase's config."""
  phases = cfg.phase_configs
  if phase not in phases:
    raise ValueError(f"{prefix}.phase {phase!r} is not in phases ({sorted(phases)})")
  unknown = [p for p in before if p not in phases]
  if unknown:
    raise ValueError(f"{prefix}.before names {unknown}, which are not in phases")
  if phases[phase].kind != "rl":
    raise ValueError(f"{prefix}.phase {phase!r} must train on rollouts; its objective "
                     f"{phases[phase].objective.name!r} does not")
  return phases[phase]


_REGISTRY: registry.Registry[Recipe] = registry.Registry("recipe")


def register(recipe: Recipe) -> Recipe:
  return _REGISTRY.register(recipe.name, recipe)


def get(name: str) -> Recipe:
  return _REGISTRY.get(name)


def names() -> Tuple[str, ...]:
  return _REGISTRY.names()


def run(cfg: ExperimentConfig, workdir: str) -> Dict[str, Any]:
  """Runs (or resumes) the experiment with its recipe; returns the summary (process 0)."""
  return get(cfg.recipe.name).run(cfg, workdir)
