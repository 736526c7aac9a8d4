"""The default recipe: the config's phases, one after another.

  warm_start (sft on demonstrations) -> rl (grpo on prompts)    configs/grpo_addition.py
  dpo (on preference pairs)                                     configs/dpo_jsonl.py

Each phase resumes on its own from ``<workdir>/checkpoints/<phase>``; a role trained by one
phase enters the next with the weights it ended with.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Tuple

from rlalign.recipes import base
from rlalign.rl.experiment import ExperimentConfig
from rlalign.rl.runtime import Runtime


@dataclasses.dataclass(frozen=True)
class SequenceSettings:
  order: Tuple[str, ...] = ()  # phase names in the order they run; () runs them all, by name

  def validate(self, prefix: str, cfg: ExperimentConfig) -> None:
    unknown = [p for p in self.order if p not in cfg.phase_configs]
    if unknown:
      raise ValueError(f"{prefix}.order names {unknown}, which are not in phases "
                       f"({sorted(cfg.phase_configs)})")
    if len(set(self.order)) != len(self.order):
      raise ValueError(f"{prefix}.order repeats a phase: {self.order}")


def order_of(cfg: ExperimentConfig) -> Tuple[str, ...]:
  settings = cfg.recipe.settings
  return (settings.order if settings is not None and settings.order
          else tuple(sorted(cfg.phase_configs)))


def run(cfg: ExperimentConfig, workdir: str) -> Dict[str, Any]:
  order = order_of(cfg)
  runtime = Runtime(cfg, workdir, [(name, cfg.phase_configs[name].steps) for name in order])
  runtime.evaluate_initial()
  for name in order:
    runtime.run_phase(name)
  title = " -> ".join(f"{name} ({cfg.phase_configs[name].objective.name})" for name in order)
  return runtime.finish(f"{title} on {cfg.data.task}")


RECIPE = base.register(base.Recipe("sequence", SequenceSettings, run))
