"""Phases: resumable loops of one kind of step, and their typed configs.

A phase trains the roles its objective names, for ``steps`` steps, on one data source. What
kind of phase it is follows from the objective's batch kind:

  rollouts                        online RL: sample, score, learn (``rl/iteration.py``)
  demonstrations, pairs, scored   offline training on the dataset (``rl/offline.py``)

:func:`run_phase` is the loop every phase and recipe shares: progress bar, metrics, evaluation
and checkpoints, resuming from the phase's latest checkpoint.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import jax
import numpy as np

from rlalign import checkpoint as ckpt_lib
from rlalign import metrics as metrics_lib
from rlalign.objectives import base as obj_base
from rlalign.rewards import base as reward_base
from rlalign.rewards import host_pool
from rlalign.rl.iteration import RLConfig
from rlalign.rl.roles import AdapterConfig
from rlalign.rl.state import OptimizerConfig


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
  name: str
  hparams: Any  # the registered objective's own frozen dataclass

  @property
  def objective(self) -> obj_base.Objective:
    return obj_base.get(self.name)


def default_objective(name: str = "grpo") -> ObjectiveConfig:
  return ObjectiveConfig(name, obj_base.get(name).hparams())


@dataclasses.dataclass(frozen=True)
class PhaseConfig:
  """One phase of a run. The fields after ``slots`` apply to rollout (RL) phases only.

  ``steps=0`` makes an evaluation phase: no update, one held-out evaluation of its policy
  (and, for a pairs objective, of the objective's own metrics) at its place in the run.
  """
  steps: int = 100
  batch_size: int = 64  # per step: rollouts (RL), or examples / pairs (offline)
  objective: ObjectiveConfig = dataclasses.field(default_factory=default_objective)
  optimizer: Optional[OptimizerConfig] = None  # None: each trained role's own optimizer
  adapter: AdapterConfig = AdapterConfig()  # LoRA on the policy slot's role, this phase only
  slots: Tuple[Tuple[str, str], ...] = ()  # objective slot -> role, where the names differ
  epochs: int = 1
  minibatches: int = 1
  group_size: int = 8
  advantage: str = ""  # "": the objective's own default (``Objective.advantage``)
  rewards: Tuple[reward_base.RewardTerm, ...] = (reward_base.RewardTerm("exact_match"),)
  response_buckets: Tuple[int, ...] = ()
  rescore_old_logprobs: bool = False
  dynamic_sampling: bool = False  # DAPO: keep the groups whose rewards differ (RLConfig)
  oversample: int = 2             # prompts sampled per trained prompt, with dynamic_sampling
  informative_rewards: Tuple[str, ...] = ()  # the rewards deciding a group's informativeness
  # Scored and logged as monitor/<source> beside the rewards, never trained on (RLConfig).
  monitors: Tuple[reward_base.RewardTerm, ...] = ()
  host_rewards: host_pool.HostRewardSettings = host_pool.HostRewardSettings()

  @property
  def kind(self) -> str:
    return "rl" if self.objective.objective.batch == "rollouts" else "offline"

  @property
  def slot_map(self) -> Dict[str, str]:
    return dict(self.slots)

  def role(self, slot: str) -> str:
    return self.slot_map.get(slot, slot)

  @property
  def trained_roles(self) -> Tuple[str, ...]:
    return tuple(self.role(slot) for slot in self.objective.objective.trains)

  @property
  def rows_per_step(self) -> int:
    """Dataset rows one step reads: prompts (RL) or examples / pairs (offline)."""
    return self.rl().sampled_prompts_per_step if self.kind == "rl" else self.batch_size

  def rl(self) -> RLConfig:
    return RLConfig(batch_size=self.batch_size, group_size=self.group_size, epochs=self.epochs,
                    minibatches=self.minibatches,
                    advantage=self.advantage or self.objective.objective.advantage,
                    rewards=self.rewards, response_buckets=self.response_buckets,
                    rescore_old_logprobs=self.rescore_old_logprobs,
                    dynamic_sampling=self.dynamic_sampling, oversample=self.oversample,
                    informative_rewards=self.informative_rewards, monitors=self.monitors,
                    host_rewards=self.host_rewards)

  def validate(self, prefix: str) -> None:
    if self.steps < 0:
      raise ValueError(f"{prefix}.steps must be >= 0 (0: evaluate only), got {self.steps}")
    for name in ("batch_size", "epochs", "minibatches"):
      if getattr(self, name) <= 0:
        raise ValueError(f"{prefix}.{name} must be positive, got {getattr(self, name)}")
    if self.batch_size % self.minibatches:
      raise ValueError(f"{prefix}.minibatches ({self.minibatches}) must divide "
                       f"{prefix}.batch_size ({self.batch_size})")
    if self.optimizer is not None:
      self.optimizer.validate(f"{prefix}.optimizer")
    self.adapter.validate(f"{prefix}.adapter")
    if hasattr(self.objective.hparams, "validate"):
      self.objective.hparams.validate(f"{prefix}.objective")
    if self.kind == "rl":
      self.rl().validate(prefix)
    objective = self.objective.objective
    known = set(objective.trains) | set(objective.reads) | {"reference"}
    unknown = set(self.slot_map) - known
    if unknown:
      raise ValueError(f"{prefix}.slots names {sorted(unknown)}, which objective "
                       f"{self.objective.name!r} does not have; its slots: {sorted(known)}")


@dataclasses.dataclass
class Phase:
  """One resumable loop of ``step(state, batch, rng, frozen) -> (state, metrics)``.

  Each step's metrics must include ``tokens``, the tokens it processed (trained on, or
  generated), for the tokens/s figure. Everything in ``state`` is checkpointed, so a recipe
  keeps counters or a payoff matrix of its own beside the roles (``state["recipe"]``).
  """
  name: str
  step_fn: Callable
  num_steps: int
  step_offset: int  # added to the phase's step on the shared metrics axis
  log_every: int
  eval_every: int = 0
  evaluate: Optional[Callable[[Any], Dict[str, float]]] = None  # of the state
  metric_prefix: str = ""
  put_batch: Callable[[Mapping[str, np.ndarray]], Any] = lambda batch: batch


POSTFIX_KEYS = ("loss", "reward", "accuracy", "pass@1_greedy")


def run_phase(phase: Phase, state, data_iter, rng: jax.Array, frozen: Mapping[str, Any],
              checkpointer: ckpt_lib.Checkpointer, writer: metrics_lib.MetricsWriter,
              save_frozen: bool = True):
  """Runs ``phase`` from ``state['step']`` to ``phase.num_steps``, checkpointing as it goes.

  Each checkpoint holds the state (every trained role, the recipe's own arrays), the RNG, the
  data position and, with ``save_frozen``, the frozen roles the phase reads: one checkpoint
  alone resumes the phase.
  """
  step = int(jax.device_get(state["step"]))
  bar = metrics_lib.progress(total=phase.num_steps, initial=step, desc=phase.name,
                             enabled=jax.process_index() == 0)
  window_start, window_steps, window_tokens = time.perf_counter(), 0, 0.0
  while step < phase.num_steps:
    batch = phase.put_batch(next(data_iter))
    state, metrics = phase.step_fn(state, batch, rng, frozen)
    step += 1
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    window_steps += 1
    window_tokens += metrics.pop("tokens")
    last = step == phase.num_steps
    if step % phase.log_every == 0 or last:
      elapsed = time.perf_counter() - window_start
      record = {f"{phase.metric_prefix}{k}": v for k, v in metrics.items()}
      record[f"{phase.metric_prefix}step_time_s"] = elapsed / window_steps
      record[f"{phase.metric_prefix}tokens_per_s"] = window_tokens / elapsed
      if phase.evaluate is not None and (last or (phase.eval_every
                                                  and step % phase.eval_every == 0)):
        record.update(phase.evaluate(state))
      writer.write(phase.step_offset + step, record)
      bar.set_postfix({k: f"{v:.3g}" for k, v in record.items()
                       if k.split("/")[-1] in POSTFIX_KEYS})
      window_start, window_steps, window_tokens = time.perf_counter(), 0, 0.0
    if checkpointer.should_save(step) or last:
      checkpointer.save(step, checkpoint_tree(state, rng, frozen if save_frozen else None),
                        data_iter.get_state(), force=last)
    bar.update(1)
  bar.close()
  checkpointer.wait_until_finished()
  return state


def checkpoint_tree(state, rng: jax.Array, frozen: Optional[Mapping[str, Any]]):
  tree = {**state, "rng": jax.random.key_data(rng)}
  if frozen:
    tree["frozen"] = dict(frozen)
  return tree


def resume(checkpointer: ckpt_lib.Checkpointer, state, data_iter, rng: jax.Array,
           frozen: Optional[Mapping[str, Any]] = None):
  """Restores the latest checkpoint into ``state``, the RNG, the iterator and (when the
  checkpoint holds them) the frozen roles; returns ``(state, rng, frozen)``."""
  frozen = dict(frozen or {})
  if checkpointer.latest_step() is None:
    return state, rng, frozen
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        checkpoint_tree(state, rng, frozen if frozen else None))
  restored, data_state = checkpointer.restore(target)
  data_iter.set_state(data_state)
  rng = jax.random.wrap_key_data(restored.pop("rng"))
  frozen = {**frozen, **restored.pop("frozen", {})}
  return restored, rng, frozen
