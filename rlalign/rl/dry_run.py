"""Ahead-of-time check of a run's programs: lower and compile them, never run them.

  python -m rlalign.main --config=configs/grpo_7b.py:8xh100 --workdir=DIR --dry_run \
      [--dry_run_reward_model] [--device_memory_gib=80]

Every input is a ``jax.ShapeDtypeStruct`` carrying the sharding the trainer would give it, so
no param is allocated (a 7B model fits in the dry run of a laptop) and no data is prepared.
What it compiles, for the config's mesh on the devices present:

  rl_step   the first RL phase's fused iteration (sample, score, learn), as ``make_rl_step``
            jits it; when the iteration splits (a host reward, or
            ``sampler_layout.separate``), its ``learn`` program instead
  sampler   ``sampler.sample`` on the phase's ``batch_size`` prompts, on
            ``sampler_layout.mesh`` when the sampler has a mesh of its own

A layout that does not divide, a missing rule or a partitioner error surfaces here, before a
pod is paid for. Per device it reports the bytes of the params, their gradients, the optimizer
state, the frozen reference, an optional reward model of the policy's shape and the KV cache of
one sampling call, all computed from the shardings, plus XLA's own figures for each compiled
program (``memory_analysis``), and checks the largest peak against a per-device budget.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys
import time
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from rlalign.rl.experiment import ExperimentConfig
from rlalign.data import tokenizer as tokenizer_lib
from rlalign.models import transformer as tfm
from rlalign.parallel import mesh as mesh_lib
from rlalign.parallel.logical import axis_rules
from rlalign.parallel.sharding import ShardingPlan
from rlalign.rewards import base as reward_base
from rlalign.rl import iteration
from rlalign.rl import roles as roles_lib
from rlalign.rl import state as state_lib
from rlalign.sampling import sampler

GiB = 2**30
# The dry run loads no tokenizer: pad and stop ids are constants in the programs and change
# neither their layouts nor their memory.
PAD_ID = 0


class DryRunError(ValueError):
  """A layout the mesh cannot hold: a dimension that does not divide, an unknown axis."""


@dataclasses.dataclass(frozen=True)
class StateBytes:
  """Per-device bytes of what a run holds, from the shardings (not from XLA)."""
  params: int
  grads: int          # params' layout in float32
  optimizer: int
  reference: int
  reward_model: int   # the RL phase's reward roles, or one counted on request, or 0
  kv_cache: int       # one sampling call of rl.batch_size rows
  sampler_params: int  # the sampler's own copy with sampler_layout.separate, else 0
  param_dtype: str
  kv_shape: Tuple[int, ...]
  kv_spec: str


@dataclasses.dataclass(frozen=True)
class ProgramBytes:
  """Per-device figures of one compiled program (``compiled.memory_analysis()``)."""
  name: str
  arguments: int
  outputs: int
  aliased: int        # outputs written into donated arguments
  temp: int
  outside: int        # held by the run while this program runs, but not among its arguments
  outside_what: str
  compile_s: float

  @property
  def peak(self) -> int:
    return self.arguments + self.outputs - self.aliased + self.temp + self.outside


@dataclasses.dataclass(frozen=True)
class DryRunReport:
  mesh: Mapping[str, int]
  sampler_mesh: Optional[Mapping[str, int]]  # None: the sampler shares the learner's mesh
  devices: int
  platform: str
  processes: int
  state: StateBytes
  programs: Tuple[ProgramBytes, ...]
  reward_roles: Tuple[str, ...] = ()  # learned reward roles compiled into the RL step

  @property
  def peak(self) -> int:
    return max(p.peak for p in self.programs)


def batch_shapes(cfg: ExperimentConfig, rows: int) -> Dict[str, jax.ShapeDtypeStruct]:
  """One data batch's fields (see ``data.pipeline.encode_example``), without any data."""
  P, A = cfg.data.max_prompt_len, cfg.data.max_answer_len
  ids = lambda n: jax.ShapeDtypeStruct((rows, n), np.int32)
  mask = lambda n: jax.ShapeDtypeStruct((rows, n), np.bool_)
  return {"prompt_tokens": ids(P), "prompt_mask": mask(P),
          "answer_tokens": ids(A), "answer_mask": mask(A),
          **{f"{k}_{f}": (ids if f == "tokens" else mask)(A)
             for k in ("demo", "chosen", "rejected", "completion") for f in ("tokens", "mask")},
          "labels": jax.ShapeDtypeStruct((rows,), np.float32),
          "step_labels": jax.ShapeDtypeStruct((rows, A), np.float32)}


def rl_phase(cfg: ExperimentConfig):
  """The run's first RL phase, as ``(name, PhaseConfig)``; the dry run compiles its step."""
  for name, phase in cfg.phases:
    if phase.kind == "rl":
      return name, phase
  raise DryRunError("the config has no RL phase (an objective on rollouts) to dry-run")


def reward_roles(cfg: ExperimentConfig) -> Tuple[str, ...]:
  """The roles the RL phase's rewards read (learned reward models), but its reference, which
  the step holds anyway."""
  phase = rl_phase(cfg)[1]
  return tuple(r for r in phase.rl().reward_roles if r != phase.role("reference"))


def _optimizer(cfg: ExperimentConfig, phase):
  return state_lib.make_optimizer(phase.optimizer or cfg.role_configs["policy"].optimizer)


def per_device_bytes(abstract_tree, shardings) -> int:
  """Bytes one device holds of a pytree laid out by ``shardings`` (the largest shard)."""
  leaves = jax.tree.leaves(abstract_tree)
  return sum(math.prod(s.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
             for x, s in zip(leaves, jax.tree.leaves(shardings)))


def _with_shardings(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


def _as_float32(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32), tree)


def state_bytes(cfg: ExperimentConfig, plan: ShardingPlan, reward_model: bool = False,
                sampler_plan: Optional[ShardingPlan] = None) -> StateBytes:
  """Params, grads, optimizer, reference, reward model and KV cache bytes per device.

  With a ``sampler_plan`` the KV cache follows the sampler's mesh and rules, and the
  sampler's copy of the params is counted too.
  """
  _, phase = rl_phase(cfg)
  rl = phase.rl()
  abstract = tfm.abstract_params(cfg.model)
  param_sh = plan.params(tfm.logical_axes(cfg.model), abstract)
  optimizer = _optimizer(cfg, phase)
  opt_sh = plan.optimizer_state(param_sh, abstract, optimizer)
  params = per_device_bytes(abstract, param_sh)
  # The reward roles the RL phase reads are compiled into its step as arguments. Without
  # any, --dry_run_reward_model counts (not compiles) one of the policy's backbone with a
  # scalar head in place of the LM head.
  models = [cfg.role_model(name) for name in reward_roles(cfg)]
  if not models and reward_model:
    models = [dataclasses.replace(cfg.model, heads=("scalar",))]
  rm = sum(per_device_bytes(tfm.abstract_params(m), plan.params(tfm.logical_axes(m),
                                                                tfm.abstract_params(m)))
           for m in models)
  m = cfg.model
  sp = sampler_plan or plan
  kv, kv_shape, kv_sh = kv_cache_bytes(cfg, m, rl.batch_size, sp)
  sampler_params = 0
  if sampler_plan is not None:
    sampler_params = per_device_bytes(abstract, sp.params(tfm.logical_axes(m), abstract))
  return StateBytes(
      params=params, grads=per_device_bytes(_as_float32(abstract), param_sh),
      optimizer=per_device_bytes(jax.eval_shape(optimizer.init, abstract), opt_sh),
      reference=params, reward_model=rm, kv_cache=kv, sampler_params=sampler_params,
      param_dtype=m.param_dtype,
      kv_shape=kv_shape, kv_spec=str(kv_sh.spec))


def kv_cache_bytes(cfg: ExperimentConfig, model: tfm.ModelConfig, rows: int,
                   plan: ShardingPlan, slots: int = 0):
  """``(bytes per device, shape, sharding)`` of the keys and values of one sampling call of
  ``rows`` sequences of ``slots`` slots (0: prompt plus every new token)."""
  slots = slots or cfg.data.max_prompt_len + cfg.sampling.max_new_tokens
  shape = (model.n_layers, rows, model.n_kv_heads, slots, model.head_dim)
  sharding = mesh_lib.sharding_for(plan.mesh, tfm.CACHE_AXES, plan.rules)
  size = 2 * math.prod(sharding.shard_shape(shape)) * jnp.dtype(model.dtype).itemsize
  return size, shape, sharding


def _compile(name: str, jitted, args: Sequence[Any], outside_what: str = "", outside: int = 0
             ) -> ProgramBytes:
  """Lowers and compiles ``jitted`` for abstract ``args``; XLA's per-device figures."""
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  seconds = time.perf_counter() - start
  m = compiled.memory_analysis()
  return ProgramBytes(name, m.argument_size_in_bytes, m.output_size_in_bytes,
                      m.alias_size_in_bytes, m.temp_size_in_bytes, outside, outside_what,
                      seconds)


def _check_batches(cfg: ExperimentConfig, plan: ShardingPlan) -> None:
  if not any(phase.kind == "rl" for _, phase in cfg.phases):
    # A recipe whose own program samples in offline phases (the debate's): their rows.
    for name, phase in cfg.phases:
      plan.check_batch(phase.batch_size, f"phases.{name}.batch_size (rows per step)")
    return
  name, phase = rl_phase(cfg)
  rl, key = phase.rl(), f"phases.{name}"
  plan.check_batch(rl.sampled_prompts_per_step,
                   f"{key}.batch_size / {key}.group_size (prompts per step)")
  plan.check_batch(rl.batch_size, f"{key}.batch_size (rollouts per step)")
  plan.check_batch(rl.batch_size // rl.minibatches,
                   f"{key}.batch_size / {key}.minibatches (rollouts per minibatch)")
  if rl.sampled_prompts_per_step % jax.process_count():
    raise ValueError(f"{key}.batch_size / {key}.group_size ({rl.sampled_prompts_per_step}) must "
                     f"divide over the {jax.process_count()} processes")


def _checked(make: Callable[[], Any]) -> Any:
  """Runs a layout check; its ValueError or KeyError becomes a DryRunError."""
  try:
    return make()
  except (ValueError, KeyError) as e:
    raise DryRunError(e.args[0] if e.args else str(e)) from None


def _check_params(cfg: ExperimentConfig, plan: ShardingPlan) -> None:
  for model in (cfg.model, dataclasses.replace(cfg.model, heads=("scalar",))):
    plan.params(tfm.logical_axes(model), tfm.abstract_params(model))
  mesh_lib.sharding_for(plan.mesh, tfm.CACHE_AXES, plan.rules)


def make_plan(cfg: ExperimentConfig, devices: Optional[Sequence[jax.Device]] = None
              ) -> ShardingPlan:
  """The learner's mesh and rules, with every batch and param layout checked (DryRunError)."""
  def make():
    plan = ShardingPlan(mesh_lib.make_mesh(cfg.mesh, devices), cfg.mesh.rules)
    _check_batches(cfg, plan)
    _check_params(cfg, plan)
    return plan
  return _checked(make)


def make_sampler_plan(cfg: ExperimentConfig, devices: Optional[Sequence[jax.Device]] = None
                      ) -> Optional[ShardingPlan]:
  """The sampler's own mesh with ``sampler_layout.separate`` (checked), else None."""
  if not cfg.sampler_layout.separate:
    return None
  def make():
    mesh_cfg = cfg.sampler_layout.mesh
    plan = ShardingPlan(mesh_lib.make_mesh(mesh_cfg, devices), mesh_cfg.rules)
    name, phase = rl_phase(cfg)
    rl, key = phase.rl(), f"phases.{name}"
    for rows, what in ((rl.sampled_prompts_per_step, f"{key}.batch_size / {key}.group_size (prompts "
                        "per step)"), (rl.batch_size, f"{key}.batch_size (rollouts per step)")):
      plan.check_batch(rows, f"{what} on sampler_layout.mesh")
    _check_params(cfg, plan)
    return plan
  return _checked(make)


def _abstract_key(plan: ShardingPlan) -> jax.ShapeDtypeStruct:
  # A typed key array's shape and dtype, without making a key.
  dtype = jax.eval_shape(lambda: jax.random.key(0)).dtype
  return jax.ShapeDtypeStruct((), dtype, sharding=plan.replicated)


def dry_run(cfg: ExperimentConfig, reward_model: bool = False,
            devices: Optional[Sequence[jax.Device]] = None) -> DryRunReport:
  """Lowers and compiles the RL step and the sampler for the config's meshes; runs nothing."""
  plan = make_plan(cfg, devices)
  sampler_plan = make_sampler_plan(cfg, devices)
  _, phase = rl_phase(cfg)
  rl = phase.rl()
  # Settings that name text (a judge's template, the digits a rubric reads) in the run's
  # token ids, as the runtime gives them: the tokenizer needs no data.
  tokenizer = tokenizer_lib.tokenizer_for(cfg.data)
  rl = dataclasses.replace(rl, rewards=reward_base.resolve_terms(rl.rewards, tokenizer),
                           monitors=reward_base.resolve_terms(rl.monitors, tokenizer))
  # A reward that reads the phase's own reference (a judge that is the round's start, as in
  # Self-Rewarding) reads the step's frozen reference: one copy, counted once.
  own = phase.role("reference")
  as_reference = lambda terms: tuple(
      dataclasses.replace(t, settings=dataclasses.replace(t.settings, role="reference"))
      if own in t.roles and getattr(t.settings, "role", None) == own else t for t in terms)
  rl = dataclasses.replace(rl, rewards=as_reference(rl.rewards),
                           monitors=as_reference(rl.monitors))
  optimizer = _optimizer(cfg, phase)
  abstract = tfm.abstract_params(cfg.model)
  param_sh = plan.params(tfm.logical_axes(cfg.model), abstract)
  state_sh = plan.train_state({"policy": param_sh}, {"policy": abstract},
                              {"policy": optimizer})
  state = _with_shardings(
      {"step": jax.ShapeDtypeStruct((), np.int32),
       "roles": {"policy": {"params": abstract,
                            "opt_state": jax.eval_shape(optimizer.init, abstract)}}}, state_sh)
  frozen = {"reference": _with_shardings(abstract, param_sh)}
  frozen_sh = {"reference": param_sh}
  spec = iteration.single_policy_spec(cfg.model, cfg.sampling, rl, phase.objective.objective,
                                      phase.objective.hparams, optimizer, pad_id=PAD_ID)
  readers = reward_roles(cfg)
  if readers:  # learned rewards: their roles enter the step as sharded arguments
    roles = dict(spec.binding.roles)
    for name in readers:
      model = cfg.role_model(name)
      rm_abstract = tfm.abstract_params(model)
      frozen_sh[name] = plan.params(tfm.logical_axes(model), rm_abstract)
      frozen[name] = _with_shardings(rm_abstract, frozen_sh[name])
      roles[name] = iteration.roles_lib.RoleSpec(model)
    spec = dataclasses.replace(spec, binding=dataclasses.replace(spec.binding, roles=roles))
  batch = batch_shapes(cfg, rl.sampled_prompts_per_step)
  batch = _with_shardings(batch, plan.batch(batch))
  rng = _abstract_key(plan)
  held = state_bytes(cfg, plan, reward_model, sampler_plan)
  # A counted reward model is held beside the step; a real one is among its arguments.
  counted = reward_model and not readers
  rm = ("reward model", held.reward_model) if counted else ("", 0)

  if spec.fused and sampler_plan is None:  # exactly the program make_rl_step jits
    layout = iteration.StepLayout(plan, state_sh, plan.batch(batch), frozen_sh)
    step = iteration.make_rl_step(spec, layout=layout)
    rl_program = _compile("rl_step", step, (state, batch, rng, frozen), *rm)
  else:
    rl_program = _compile_learn(spec, plan, state_sh, state, batch, rng, frozen, rm)

  sp = sampler_plan or plan
  params = _with_shardings(abstract, sp.params(tfm.logical_axes(cfg.model), abstract))
  prompts = jax.ShapeDtypeStruct((rl.batch_size, cfg.data.max_prompt_len), np.int32)
  prompts = _with_shardings(prompts, sp.batch(prompts))
  mask = jax.ShapeDtypeStruct(prompts.shape, np.bool_, sharding=prompts.sharding)
  sample = iteration.jit_with_rules(
      functools.partial(sampler.sample, model_cfg=cfg.model, cfg=cfg.sampling, pad_id=PAD_ID),
      sp)
  # While a sampler runs (evaluation, or a split iteration), the optimizer state and the
  # reference stay resident, and so do the learner's params when the sampler has a copy.
  outside = ["optimizer", "reference"] + ["learner's params"] * (sampler_plan is not None)
  outside += ["reward model"] * bool(held.reward_model)
  sampler_program = _compile(
      "sampler", sample, (params, prompts, mask, _abstract_key(sp)), " + ".join(outside),
      held.optimizer + held.reference + held.reward_model
      + (held.params if sampler_plan else 0))
  return DryRunReport(mesh=dict(plan.mesh.shape),
                      sampler_mesh=dict(sampler_plan.mesh.shape) if sampler_plan else None,
                      devices=plan.mesh.size, platform=plan.mesh.devices.flat[0].platform,
                      processes=jax.process_count(), state=held,
                      programs=(rl_program, sampler_program), reward_roles=readers)


@dataclasses.dataclass(frozen=True)
class RecipeProgram:
  """A recipe's own step for the dry run: several roles trained in one program."""
  name: str
  roles: Mapping[str, Any]             # role name -> roles.RoleSpec (trained: an optimizer)
  make_step: Callable[[Any], Callable]  # StepLayout -> jitted step(state, batch, rng, frozen)
  rows: int                            # dataset rows (prompts) per step
  rollouts: int                        # sampled completions per step (the KV cache's rows)
  policy: str                          # the role that samples
  extra_state: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # abstract arrays
  cache_slots: int = 0                 # the KV cache's length; 0: prompt plus new tokens


@dataclasses.dataclass(frozen=True)
class RoleBytes:
  """Per-device bytes one role holds, from its shardings."""
  name: str
  trained: bool
  params: int
  grads: int       # float32, trained roles only
  optimizer: int   # trained roles only
  param_dtype: str


@dataclasses.dataclass(frozen=True)
class RecipeReport:
  mesh: Mapping[str, int]
  devices: int
  platform: str
  processes: int
  roles: Tuple[RoleBytes, ...]
  kv_cache: int
  kv_shape: Tuple[int, ...]
  programs: Tuple[ProgramBytes, ...]

  @property
  def peak(self) -> int:
    return max(p.peak for p in self.programs)


def dry_run_recipe(cfg: ExperimentConfig, program: RecipeProgram,
                   devices: Optional[Sequence[jax.Device]] = None) -> RecipeReport:
  """Lowers and compiles a recipe's multi-role step on abstract inputs; runs nothing."""
  plan = make_plan(cfg, devices)
  shardings, abstract, frozen_sh, frozen, held = {}, {}, {}, {}, []
  for name, spec in program.roles.items():
    rules = cfg.role_configs[name].rules
    role_plan = plan if rules is None else ShardingPlan(plan.mesh, rules)
    params = tfm.abstract_params(spec.model)
    sh = _checked(lambda: role_plan.params(tfm.logical_axes(spec.model), params))
    if spec.adapter is not None:
      raise DryRunError(f"roles.{name}: the dry run of recipe {cfg.recipe.name!r} does not "
                        "lay out LoRA adapters yet; dry-run it with full fine-tuning")
    if spec.trained:
      shardings[name], abstract[name] = sh, params
      opt = jax.eval_shape(spec.optimizer.init, params)
      opt_sh = plan.optimizer_state(sh, params, spec.optimizer)
      held.append(RoleBytes(name, True, per_device_bytes(params, sh),
                            per_device_bytes(_as_float32(params), sh),
                            per_device_bytes(opt, opt_sh), spec.model.param_dtype))
    else:
      frozen_sh[name], frozen[name] = sh, _with_shardings(params, sh)
      held.append(RoleBytes(name, False, per_device_bytes(params, sh), 0, 0,
                            spec.model.param_dtype))
  optimizers = roles_lib.optimizers(program.roles)
  state_sh = plan.train_state(shardings, abstract, optimizers)
  state = jax.eval_shape(lambda p: state_lib.init_state(p, optimizers), abstract)
  extra = dict(program.extra_state)
  state = {**state, **extra}
  state_sh = {**state_sh, **jax.tree.map(lambda _: plan.replicated, extra)}
  state = _with_shardings(state, state_sh)
  batch = batch_shapes(cfg, program.rows)
  batch_sh = plan.batch(batch)
  batch = _with_shardings(batch, batch_sh)
  layout = iteration.StepLayout(plan, state_sh, batch_sh, frozen_sh)
  step = program.make_step(layout)
  compiled = _compile(program.name, step, (state, batch, _abstract_key(plan), frozen))
  kv, kv_shape, _ = kv_cache_bytes(cfg, cfg.role_model(program.policy), program.rollouts, plan,
                                   program.cache_slots)
  return RecipeReport(mesh=dict(plan.mesh.shape), devices=plan.mesh.size,
                      platform=plan.mesh.devices.flat[0].platform,
                      processes=jax.process_count(), roles=tuple(held), kv_cache=kv,
                      kv_shape=kv_shape, programs=(compiled,))


def recipe_markdown(report: RecipeReport, budget_bytes: Optional[int] = None) -> str:
  """Every role's bytes, the compiled step's, and the verdict."""
  mesh = " x ".join(f"{k}={v}" for k, v in report.mesh.items())
  lines = [f"mesh {mesh} over {report.devices} {report.platform} device(s) in "
           f"{report.processes} process(es); all figures are per device", "",
           "| role | params | gradients (float32) | optimizer state | total |",
           "|---|---:|---:|---:|---:|"]
  for r in report.roles:
    dash = lambda n: _size(n) if r.trained else "-"
    lines.append(f"| {r.name} ({'trained' if r.trained else 'frozen'}, {r.param_dtype}) | "
                 f"{_size(r.params)} | {dash(r.grads)} | {dash(r.optimizer)} | "
                 f"{_size(r.params + r.grads + r.optimizer)} |")
  total = sum(r.params + r.grads + r.optimizer for r in report.roles)
  lines += [f"| **all roles** | | | | **{_size(total)}** |", "",
            f"KV cache of one sampling call: {_size(report.kv_cache)} (k+v "
            f"{list(report.kv_shape)}), inside the step's temp; gradients are too."]
  return "\n".join(lines + _programs_and_verdict(report, budget_bytes))


def _compile_learn(spec, plan, state_sh, state, batch, rng, frozen, rm) -> ProgramBytes:
  """A split iteration's largest program, ``learn``, jitted as ``make_rl_step`` jits it."""
  def rollout(params, batch, rng):
    with axis_rules(plan.mesh, plan.rules):
      return iteration.rollout(params, batch, rng, spec)
  rollouts = jax.eval_shape(rollout, state["roles"]["policy"]["params"], batch, rng)
  score = jax.ShapeDtypeStruct((spec.rl.batch_size,), np.float32)
  scores = {r.key: score for r in spec.rewards}
  scores.update({iteration.MONITOR + r.key: score for r in spec.rl.monitors})
  # Rollouts and scores reach ``learn`` in the learner's batch layout.
  rollouts, scores = _with_shardings((rollouts, scores), plan.batch((rollouts, scores)))
  learn = iteration.jit_with_rules(functools.partial(iteration.learn, spec=spec), plan,
                                   donate_argnums=(0,), out_shardings=(state_sh, plan.replicated))
  return _compile("learn", learn, (state, rollouts, scores, rng, frozen), *rm)


def _size(n: int) -> str:
  for unit, scale in (("GiB", GiB), ("MiB", 2**20), ("KiB", 2**10)):
    if n >= scale:
      return f"{n / scale:.2f} {unit}"
  return f"{n} B"


def to_markdown(report: DryRunReport, budget_bytes: Optional[int] = None) -> str:
  """The state table, one table per program, and the verdict."""
  s = report.state
  mesh = " x ".join(f"{k}={v}" for k, v in report.mesh.items())
  head = f"mesh {mesh}"
  if report.sampler_mesh is not None:
    head += ", sampler mesh " + " x ".join(f"{k}={v}" for k, v in report.sampler_mesh.items())
  lines = [f"{head} over {report.devices} {report.platform} device(s) in "
           f"{report.processes} process(es); all figures are per device", "",
           "| held by the run | per device | note |", "|---|---:|---|",
           f"| params ({s.param_dtype}) | {_size(s.params)} | |",
           f"| gradients (float32) | {_size(s.grads)} | params' layout; inside the RL "
           f"program's temp (where they take the params' dtype, so this bounds them) |",
           f"| optimizer state | {_size(s.optimizer)} | follows the params' layout |",
           f"| reference | {_size(s.reference)} | frozen copy of the policy |",
           f"| reward model | {_size(s.reward_model) if s.reward_model else '-'} | "
           + (f"roles {', '.join(report.reward_roles)}, arguments of the RL step |"
              if report.reward_roles else "policy's backbone with a scalar head |"
              if s.reward_model else "not counted (--dry_run_reward_model) |"),
           *([f"| sampler's copy of the params | {_size(s.sampler_params)} | "
              f"sampler_layout.separate: resharded into the sampler's layout every step |"]
             if s.sampler_params else []),
           f"| KV cache, one sampling call | {_size(s.kv_cache)} | k+v {list(s.kv_shape)} "
           f"split {s.kv_spec}; inside the sampler's temp |"]
  return "\n".join(lines + _programs_and_verdict(report, budget_bytes))


def _programs_and_verdict(report, budget_bytes: Optional[int]) -> list:
  """One table per compiled program, the CPU caveat and the verdict line."""
  lines = []
  for p in report.programs:
    outside = [f"| held outside the program{': ' + p.outside_what if p.outside_what else ''} "
               f"| {_size(p.outside)} |"]
    lines += ["", f"| {p.name} (XLA memory_analysis) | per device |", "|---|---:|",
              f"| arguments | {_size(p.arguments)} |", f"| outputs | {_size(p.outputs)} |",
              f"| aliased (donated) | -{_size(p.aliased)} |", f"| XLA temp | {_size(p.temp)} |",
              *outside,
              f"| **peak estimate** | **{_size(p.peak)}** |",
              f"| compile time | {p.compile_s:.1f} s |"]
  if report.platform == "cpu":
    lines += ["", "XLA temp compiled for CPU is an estimate of an accelerator's: the CPU backend "
              "computes bfloat16 in float32 and may copy buffers an accelerator updates in place."]
  return lines + ["", verdict(report, budget_bytes)[1]]


def verdict(report: DryRunReport, budget_bytes: Optional[int]) -> Tuple[bool, str]:
  """Whether the largest per-device peak fits ``budget_bytes``, and a line saying so."""
  worst = max(report.programs, key=lambda p: p.peak)
  head = f"peak {_size(worst.peak)} per device ({worst.name})"
  if budget_bytes is None:
    return True, f"verdict: {head}; no --device_memory_gib budget given"
  if worst.peak <= budget_bytes:
    return True, (f"verdict: fits: {head} of {_size(budget_bytes)}, "
                  f"{_size(budget_bytes - worst.peak)} to spare")
  return False, (f"verdict: OVER BUDGET: {head} exceeds {_size(budget_bytes)} by "
                 f"{_size(worst.peak - budget_bytes)}")


def main(cfg: ExperimentConfig, workdir: str, reward_model: bool = False,
         device_memory_gib: Optional[float] = None,
         program: Optional[RecipeProgram] = None) -> int:
  """The ``--dry_run`` entry point: prints the report; 1 if over budget, 2 on a bad layout.
  With a recipe's ``program`` it compiles that step, every role it trains and reads."""
  try:
    report = dry_run(cfg, reward_model) if program is None else dry_run_recipe(cfg, program)
  except DryRunError as e:
    print(f"dry run: layout error: {e}", file=sys.stderr, flush=True)
    return 2
  budget = None if device_memory_gib is None else int(device_memory_gib * GiB)
  text = (to_markdown(report, budget) if program is None
          else recipe_markdown(report, budget))
  if jax.process_index() == 0:
    print(text, flush=True)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "dry_run.md"), "w") as f:
      f.write(text + "\n")
  return 0 if verdict(report, budget)[0] else 1
