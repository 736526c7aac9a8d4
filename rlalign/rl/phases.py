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
from rlalign.rl import preemption, update
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
  sample_from: str = ""  # a slot whose role samples the rollouts instead (RLConfig)

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
                    host_rewards=self.host_rewards, sample_from=self.sample_from)

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
    if self.sample_from and self.kind == "rl":
      if self.sample_from not in set(objective.reads) | {"reference"}:
        raise ValueError(f"{prefix}.sample_from must name a frozen slot of objective "
                         f"{self.objective.name!r} ({sorted(set(objective.reads) | {'reference'})})"
                         f", got {self.sample_from!r}")
      if not objective.any_sampler:
        raise ValueError(f"{prefix}.sample_from: objective {self.objective.name!r} reads the "
                         "sampler's log-probs as the policy's, so only the policy may sample")
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
  # Steps in a row with a skipped (non-finite) update before the run stops; 0: never stop.
  max_consecutive_skips: int = 0


class NonFiniteError(RuntimeError):
  """Training diverged: updates kept coming out non-finite, or the state to save was."""


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
  try:
    window_start, window_steps, window_tokens = time.perf_counter(), 0, 0.0
    skipped_in_a_row = 0
    while step < phase.num_steps:
      batch = phase.put_batch(next(data_iter))
      state, metrics = phase.step_fn(state, batch, rng, frozen)
      step += 1
      metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
      # Any role's skip counts: a recipe logs each role's as <role>/skipped_updates.
      skipped = any(v for k, v in metrics.items() if k.rsplit("/", 1)[-1] == "skipped_updates")
      skipped_in_a_row = skipped_in_a_row + 1 if skipped else 0
      diverged = bool(phase.max_consecutive_skips
                      and skipped_in_a_row >= phase.max_consecutive_skips)
      window_steps += 1
      window_tokens += metrics.pop("tokens")
      last = step == phase.num_steps
      # An evaluation is due whatever the log cadence (eval_every need not divide by it).
      eval_due = bool(phase.eval_every) and step % phase.eval_every == 0
      if step % phase.log_every == 0 or last or diverged or eval_due:
        elapsed = time.perf_counter() - window_start
        record = {f"{phase.metric_prefix}{k}": v for k, v in metrics.items()}
        record[f"{phase.metric_prefix}step_time_s"] = elapsed / window_steps
        record[f"{phase.metric_prefix}tokens_per_s"] = window_tokens / elapsed
        if phase.evaluate is not None and not diverged and (last or eval_due):
          record.update(phase.evaluate(state))
        writer.write(phase.step_offset + step, record)
        bar.set_postfix({k: f"{v:.3g}" for k, v in record.items()
                         if k.split("/")[-1] in POSTFIX_KEYS})
        window_start, window_steps, window_tokens = time.perf_counter(), 0, 0.0
      if diverged:
        raise NonFiniteError(
            f"phase {phase.name!r}: steps {step - skipped_in_a_row + 1}..{step} each skipped "
            f"an update with a non-finite loss, gradient or param (loss "
            f"{metrics.get('loss')}); "
            f"stopped at train.max_consecutive_skips={phase.max_consecutive_skips}, the last "
            f"checkpoint ({_newest(checkpointer)}) is intact")
      signum = preemption.agreed()
      if checkpointer.should_save(step) or last or signum:
        tree = checkpoint_tree(state, rng, frozen if save_frozen else None)
        save(phase, checkpointer, step, tree, data_iter.get_state(),
             force=last or bool(signum))
      bar.update(1)
      if signum and not last:
        checkpointer.wait_until_finished()
        raise preemption.Preempted(phase.name, step, signum)
  finally:
    bar.close()  # before any message that follows, so it is the last line
  checkpointer.wait_until_finished()
  return state


def save(phase: Phase, checkpointer: ckpt_lib.Checkpointer, step: int, tree, data_state,
         force: bool) -> None:
  """Saves a checkpoint whose every float is finite; a non-finite one is refused, so the
  newest checkpoint on disk is always one a resume can continue from."""
  bad = nonfinite_paths(tree)
  if bad:
    raise NonFiniteError(f"phase {phase.name!r} step {step}: not saving a checkpoint with "
                         f"non-finite values in {bad}; the last checkpoint "
                         f"({_newest(checkpointer)}) is intact")
  checkpointer.save(step, tree, data_state, force=force)


def _newest(checkpointer: ckpt_lib.Checkpointer) -> str:
  step = checkpointer.latest_step()
  return "none yet" if step is None else f"step {step}"


def nonfinite_paths(tree, limit: int = 5) -> list:
  """The paths of the first ``limit`` float leaves of ``tree`` holding a NaN or inf."""
  flags = _finite_leaves(tree)
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  bad = [jax.tree_util.keystr(path) for (path, _), ok in zip(flat, flags) if not ok]
  return bad[:limit] + ([f"(+{len(bad) - limit} more)"] if len(bad) > limit else [])


_finite_leaves_jit = jax.jit(update.finite_leaves)


def _finite_leaves(tree) -> list:
  return [bool(f) for f in jax.device_get(_finite_leaves_jit(tree))]


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
  # A damaged newest checkpoint is set aside and the one before it restored.
  _, restored, data_state = checkpointer.restore_newest_intact(target)
  data_iter.set_state(data_state)
  rng = jax.random.wrap_key_data(restored.pop("rng"))
  frozen = {**frozen, **restored.pop("frozen", {})}
  return restored, rng, frozen
