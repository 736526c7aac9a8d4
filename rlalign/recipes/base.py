"""The recipe interface and its registry.

A recipe is a small module: a typed config of its own and ``run(cfg, workdir) -> summary``,
a loop over phases or iterations of one or more roles, built from the public builders of
``rlalign/rl/runtime.py`` (mesh, data, writer, checkpointers, role states, phases). It never
copies the driver: the loop, metrics, evaluation and checkpoints are the runtime's.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Tuple, Type

from rlalign.rl.experiment import ExperimentConfig


@dataclasses.dataclass(frozen=True)
class Recipe:
  name: str
  settings: Type[Any]  # a frozen dataclass; validate(prefix, cfg) may check it against the run
  run: Callable[[ExperimentConfig, str], Dict[str, Any]]


_REGISTRY: Dict[str, Recipe] = {}


def register(recipe: Recipe) -> Recipe:
  if recipe.name in _REGISTRY:
    raise ValueError(f"recipe {recipe.name!r} is registered twice")
  _REGISTRY[recipe.name] = recipe
  return recipe


def get(name: str) -> Recipe:
  if name not in _REGISTRY:
    raise KeyError(f"unknown recipe {name!r}; registered: {sorted(_REGISTRY)}")
  return _REGISTRY[name]


def names() -> Tuple[str, ...]:
  return tuple(sorted(_REGISTRY))


def run(cfg: ExperimentConfig, workdir: str) -> Dict[str, Any]:
  """Runs (or resumes) the experiment with its recipe; returns the summary (process 0)."""
  return get(cfg.recipe.name).run(cfg, workdir)
