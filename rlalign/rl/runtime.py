"""The public builders every recipe composes: mesh, data, writer, checkpointers, role states,
phases and the summary.

  runtime = Runtime(cfg, workdir, schedule=[("warm_start", 1000), ("rl", 300)])
  runtime.run_phase("warm_start")   # or: phase = runtime.build_phase(...), then run it
  runtime.run_phase("rl")
  runtime.finish()

The runtime holds the current weights of every role (``runtime.weights(name)``), created the
first time a phase needs them: random, from a Hugging Face directory, from an earlier run's
checkpoint, or as a copy of another role as it is when the first phase using the copy starts.
Each phase checkpoints the roles it trains (params and optimizer state), the frozen roles it
reads (``train.checkpoint_frozen``), its data iterator, its RNG and any state of the recipe's
own under ``<workdir>/checkpoints/<phase>``, and resumes from there.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import zlib
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import jax
import numpy as np
from jax.experimental import multihost_utils

from rlalign import checkpoint as ckpt_lib
from rlalign import metrics as metrics_lib
from rlalign.data import buckets, pipeline, tokenizer as tok_lib
from rlalign.models import lora as lora_lib
from rlalign.models import transformer as tfm
from rlalign.parallel import mesh as mesh_lib
from rlalign.parallel.sharding import ShardingPlan
from rlalign.rewards import base as reward_base
from rlalign.rl import config_changes, evaluation, iteration, offline, phases as phases_lib
from rlalign.rl import roles as roles_lib
from rlalign.rl import state as state_lib
from rlalign.rl import update
from rlalign.rl import experiment
from rlalign.rl.experiment import ExperimentConfig
from rlalign.rl.layout import SamplerLayout, StepLayout, jit_with_rules


def log(message: str) -> None:
  if jax.process_index() == 0:
    print(message, flush=True)


def named_key(seed: int, kind: str, name: str, plan: ShardingPlan) -> jax.Array:
  """The run's key for one named thing (a role's init, a phase), as an array every process
  holds in full: the root key folded with a stable hash of ``kind`` and ``name``."""
  key = jax.random.key(seed)
  for part in (kind, name):
    key = jax.random.fold_in(key, zlib.crc32(part.encode()) & 0x7FFFFFFF)
  data = np.asarray(jax.random.key_data(key))
  return jax.random.wrap_key_data(jax.make_array_from_callback(
      data.shape, plan.replicated, lambda index: data[index]))


def with_stop_token(cfg: ExperimentConfig, eos_id: int) -> ExperimentConfig:
  """``cfg`` whose sampling also stops at the tokenizer's EOS."""
  stops = cfg.sampling.stop_tokens
  if eos_id in stops:
    return cfg
  return dataclasses.replace(cfg, sampling=dataclasses.replace(cfg.sampling,
                                                               stop_tokens=stops + (eos_id,)))


def _with_resolved_rewards(cfg: ExperimentConfig, tokenizer) -> ExperimentConfig:
  """Every reward, monitor and judge with the text of its settings (a judge's template) in
  token ids, so a template the tokenizer cannot express fails before anything compiles."""
  resolve = lambda terms: reward_base.resolve_terms(terms, tokenizer)
  phases = tuple((name, dataclasses.replace(p, rewards=resolve(p.rewards),
                                            monitors=resolve(p.monitors)))
                 for name, p in cfg.phases)
  judges = tuple((metric, term.resolve(tokenizer)) for metric, term in cfg.train.eval_judges)
  return dataclasses.replace(cfg, phases=phases,
                             train=dataclasses.replace(cfg.train, eval_judges=judges))


def role_specs(cfg: ExperimentConfig, phase: phases_lib.PhaseConfig, extra: Sequence[str] = ()
               ) -> Dict[str, roles_lib.RoleSpec]:
  """The roles a phase's step sees: the ones it trains (with their optimizers), the policy,
  the reference when the phase reads one, the roles its rewards read, and ``extra``."""
  roles = cfg.role_configs
  specs = {}
  wanted = list(phase.trained_roles) + [phase.role("policy")]
  wanted += [phase.role(slot) for slot in phase.objective.objective.reads]
  # A reference copied from the policy is taken when the first phase reading it starts:
  # RL phases (which log KL to it) and objectives that need one, never a warm start.
  if phase.kind == "rl" or phase.objective.objective.needs_reference(phase.objective.hparams):
    wanted.append(phase.role("reference"))
  if phase.kind == "rl":
    wanted += [r for term in phase.rewards + phase.monitors for r in term.roles]
  for name in list(dict.fromkeys(wanted)) + list(extra):
    if name not in roles:
      continue
    optimizer = adapter = None
    if name in phase.trained_roles:
      optimizer = state_lib.make_optimizer(phase.optimizer or roles[name].optimizer)
      if phase.adapter.lora_rank and name == phase.role("policy"):
        adapter = phase.adapter.lora()
      elif roles[name].adapter.lora_rank:
        adapter = roles[name].adapter.lora()
    specs[name] = roles_lib.RoleSpec(cfg.role_model(name), optimizer, adapter)
  return specs


@dataclasses.dataclass
class BuiltPhase:
  """A phase ready to run: its loop, its state (resumed), frozen roles, data, RNG, checkpoints."""
  name: str
  config: phases_lib.PhaseConfig
  phase: phases_lib.Phase
  state: Any
  frozen: Dict[str, Any]
  data: Any
  rng: jax.Array
  checkpointer: ckpt_lib.Checkpointer
  roles: roles_lib.RoleSpecs


class Runtime:
  """Everything a run needs outside the compiled steps. See the module docstring."""

  def __init__(self, cfg: ExperimentConfig, workdir: str,
               schedule: Sequence[Tuple[str, int]]):
    """``schedule`` lists the phase runs in order as ``(checkpoint name, steps)``; it fixes
    the shared metrics axis and where a resumed run picks up."""
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    if not cfg.data.data_dir:
      cfg = dataclasses.replace(cfg, data=dataclasses.replace(
          cfg.data, data_dir=os.path.join(workdir, "tfds")))
    cfg.validate()
    self.workdir = workdir
    self.tokenizer = tok_lib.tokenizer_for(cfg.data)
    cfg = with_stop_token(cfg, self.tokenizer.eos_id)
    declared = cfg  # config.json keeps the settings as written, not their token ids
    cfg = _with_resolved_rewards(cfg, self.tokenizer)
    self.cfg = cfg
    self.schedule = list(schedule)
    self._check_fits()

    self.offsets = {}
    offset = 0
    for name, steps in self.schedule:
      self.offsets[name] = offset
      offset += steps
    # A resume must continue the stored run: compare before anything is overwritten.
    started = {name: self.checkpointer(name).latest_step() is not None
               for name, _ in self.schedule}
    changes = config_changes.check_resume(
        workdir, experiment.to_dict(declared), [n for n, _ in self.schedule], started,
        step=self._resume_step(), allow=cfg.train.allow_config_change,
        record=jax.process_index() == 0, defaults=experiment.field_defaults(declared))
    if changes:
      log(f"resuming with a changed config: {config_changes.describe(changes)}")

    # The mesh and every layout are checked before anything compiles.
    self.plan = ShardingPlan(mesh_lib.make_mesh(cfg.mesh), cfg.mesh.rules)
    self._check_batches()
    log(f"mesh {dict(self.plan.mesh.shape)} over {jax.device_count()} devices in "
        f"{jax.process_count()} process(es)")
    for name in sorted(self.cfg.role_configs):
      model = cfg.role_model(name)
      abstract = tfm.abstract_params(model)
      log(mesh_lib.sharding_report(abstract, self.param_shardings(name), f"{name} params"))

    # Everything about the data is checked before anything compiles.
    # One host builds the dataset; the others wait, then reuse it.
    if jax.process_index() == 0:
      pipeline.prepare(cfg.data)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("rlalign: data prepared")
      pipeline.prepare(cfg.data)
    for split in ("train", "test"):
      pipeline.validate_split(pipeline.load_split(cfg.data, split), self.tokenizer, cfg.data,
                              split)
    self.eval_data = pipeline.eval_batches(cfg.data, self.tokenizer, "test",
                                           cfg.train.eval_batch_size)
    # Held-out splits beside "test" (an easy-to-hard task's gold-labelled hard problems):
    # read here for evaluation only; no training iterator ever opens them.
    self.extra_eval_data = {
        split: pipeline.eval_batches(cfg.data, self.tokenizer, split, cfg.train.eval_batch_size)
        for split in cfg.data.eval_splits}
    if jax.process_index() == 0:
      data = json.dumps(experiment.to_dict(declared), indent=2).encode()
      metrics_lib.atomic_write(os.path.join(workdir, "config.json"), lambda f: f.write(data))

    # Keys by name: declaring another role or phase changes no other one's randomness.
    self.eval_rng = named_key(cfg.seed, "eval", "held-out", self.plan)
    self._phase_rngs = {name: named_key(cfg.seed, "phase", name, self.plan)
                        for name, _ in self.schedule}
    self._init_rngs = {name: named_key(cfg.seed, "init", name, self.plan)
                       for name in cfg.role_configs}
    self.writer = metrics_lib.MetricsWriter(workdir, resume_step=self._resume_step(),
                                            enabled=jax.process_index() == 0,
                                            wandb=cfg.train.wandb,
                                            run_config=experiment.to_dict(declared))
    self._weights: Dict[str, Any] = {}
    self._evaluators: Dict[Tuple[str, Tuple[str, ...]], Callable] = {}
    self._start_rows: Dict[str, Optional[Dict[str, np.ndarray]]] = {}

  # ---- checks -------------------------------------------------------------------------------

  def _check_fits(self) -> None:
    cfg, tokenizer = self.cfg, self.tokenizer
    for name in cfg.role_configs:
      model = cfg.role_model(name)
      if model.vocab_size < tokenizer.vocab_size:
        raise ValueError(f"roles.{name}: model.vocab_size ({model.vocab_size}) is smaller than "
                         f"the tokenizer's vocabulary ({tokenizer.vocab_size}) for data.task="
                         f"{cfg.data.task!r}")
      if cfg.sampling.top_k > model.vocab_size:
        raise ValueError(f"sampling.top_k ({cfg.sampling.top_k}) is larger than roles.{name}'s "
                         f"vocabulary ({model.vocab_size})")
    if cfg.sampling.max_new_tokens < cfg.data.max_answer_len:
      raise ValueError(f"sampling.max_new_tokens ({cfg.sampling.max_new_tokens}) must be >= "
                       f"data.max_answer_len ({cfg.data.max_answer_len}) or no answer can match")

  def _check_batches(self) -> None:
    plan, cfg = self.plan, self.cfg
    plan.check_batch(cfg.train.eval_batch_size, "train.eval_batch_size")
    for name, phase in cfg.phases:
      if phase.kind == "rl":
        rows = f"phases.{name}.batch_size / phases.{name}.group_size (prompts per step)"
        plan.check_batch(phase.rows_per_step, rows)
      else:
        rows = f"phases.{name}.batch_size"
        plan.check_batch(phase.batch_size, rows)
      plan.check_batch(phase.batch_size // phase.minibatches,
                       f"phases.{name}.batch_size / phases.{name}.minibatches (rows per "
                       "minibatch)")
      if phase.rows_per_step % jax.process_count():
        raise ValueError(f"{rows} ({phase.rows_per_step}) must divide over the "
                         f"{jax.process_count()} processes")

  def _resume_step(self) -> int:
    """The global metrics step of the newest checkpoint, or -1 if nothing was saved."""
    latest = -1
    for name, _ in self.schedule:
      step = self.checkpointer(name).latest_step()
      if step is not None:
        latest = self.offsets[name] + step
    return latest

  # ---- roles --------------------------------------------------------------------------------

  def model(self, name: str) -> tfm.ModelConfig:
    return self.cfg.role_model(name)

  def role_plan(self, name: str) -> ShardingPlan:
    """The plan a role's params are laid out by: the run's mesh, the role's rules if it has
    its own (``roles.<name>.rules``)."""
    rules = self.cfg.role_configs[name].rules
    return self.plan if rules is None else ShardingPlan(self.plan.mesh, rules)

  def param_shardings(self, name: str):
    model = self.model(name)
    return self.role_plan(name).params(tfm.logical_axes(model), tfm.abstract_params(model))

  def weights(self, name: str):
    """The role's current weights, created from its source on first use."""
    if name not in self._weights:
      self._weights[name] = self._initial_weights(name)
    return self._weights[name]

  def set_weights(self, name: str, params) -> None:
    self._weights[name] = params

  def _initial_weights(self, name: str):
    role = self.cfg.role_configs[name]
    model, shardings = self.model(name), self.param_shardings(name)
    source = role.weights
    if source.source == "random":
      return jax.jit(functools.partial(tfm.init, model),
                     out_shardings=shardings)(self._init_rngs[name])
    if source.source == "hf":
      return self._hf_weights(name, source.path)
    if source.source == "role":
      return self._copied_weights(name, source.role)
    return self._checkpoint_weights(name, source.path, source.role or name)

  def _hf_weights(self, name: str, path: str):
    from rlalign.models import hf  # safetensors and the family tables only when needed
    model = self.model(name)
    loaded_cfg, params = hf.load_hf_checkpoint(path, dtype=model.param_dtype,
                                               shardings=self.param_shardings(name),
                                               heads=model.heads,
                                               scalar_heads=model.scalar_heads)
    # The checkpoint fixes the architecture; only numerics (dtypes, remat) may differ.
    numerics = ("dtype", "param_dtype", "remat")
    theirs = {k: v for k, v in dataclasses.asdict(loaded_cfg).items() if k not in numerics}
    ours = {k: v for k, v in dataclasses.asdict(model).items() if k not in numerics}
    diff = {k: (ours[k], theirs[k]) for k in ours if ours[k] != theirs[k]}
    if diff:
      raise ValueError(f"roles.{name}: model config differs from {path}/config.json: "
                       + ", ".join(f"model.{k}={a!r} vs {b!r}" for k, (a, b) in diff.items()))
    return params

  def _copied_weights(self, name: str, source: str):
    """Another role's weights; heads the source lacks start fresh (a scalar head at zero)."""
    src = self.weights(source)
    model = self.model(name)
    if self.model(source) == model:
      # The same arrays when the layouts agree (frozen copies are never donated), else moved
      # into the role's own layout.
      own = self.param_shardings(name)
      if all(a.sharding == b for a, b in zip(jax.tree.leaves(src), jax.tree.leaves(own))):
        return src
      return jax.device_put(src, own)
    fresh = jax.jit(functools.partial(tfm.init, model),
                    out_shardings=self.param_shardings(name))(self._init_rngs[name])
    shared = set(fresh) & set(src)
    for key in shared:
      if jax.tree.map(lambda x: x.shape, fresh[key]) != jax.tree.map(lambda x: x.shape, src[key]):
        raise ValueError(f"roles.{name}.weights: role {source!r} has {key} of another shape; "
                         "a copied role may differ from its source only in its heads")
    out = {key: (src[key] if key in shared else fresh[key]) for key in fresh}
    if "scalar_head" in out and "scalar_head" not in src and model.scalar_heads == 1:
      # A value head starts at zero; K ensemble heads keep their random starts, which is
      # what makes them disagree.
      out["scalar_head"] = jax.tree.map(lambda x: x * 0, out["scalar_head"])
    return jax.device_put(out, self.param_shardings(name))

  def _checkpoint_weights(self, name: str, directory: str, saved_as: str):
    # Read-only: the earlier run may still be saving, and opening it to write would clean
    # up its save in progress.
    if not os.path.isdir(directory):
      raise FileNotFoundError(f"roles.{name}.weights.path: no checkpoint directory {directory}")
    ckpt = ckpt_lib.Checkpointer(directory, save_every=1, read_only=True)
    step = ckpt.latest_step()
    if step is None:
      raise FileNotFoundError(f"roles.{name}.weights.path: no checkpoint in {directory}")
    return ckpt.restore_subtree(step, ("roles", saved_as, "params"), self._abstract_params(name))

  def _abstract_params(self, name: str):
    model = self.model(name)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tfm.abstract_params(model), self.param_shardings(name))

  # ---- phases -------------------------------------------------------------------------------

  def checkpointer(self, name: str) -> ckpt_lib.Checkpointer:
    return ckpt_lib.Checkpointer(os.path.join(self.workdir, "checkpoints", name),
                                 save_every=self.cfg.train.checkpoint_every,
                                 max_to_keep=self.cfg.train.max_checkpoints)

  def role_specs(self, phase: phases_lib.PhaseConfig, extra: Sequence[str] = ()
                 ) -> Dict[str, roles_lib.RoleSpec]:
    return role_specs(self.cfg, phase, extra)

  def binding(self, phase: phases_lib.PhaseConfig, roles: roles_lib.RoleSpecs) -> update.Binding:
    return update.Binding(phase.objective.objective, phase.objective.hparams, roles,
                          phase.slot_map, phase.epochs, phase.minibatches)

  def initial_state(self, roles: roles_lib.RoleSpecs):
    """Fresh train state of the trained roles (adapters for LoRA ones), in their layouts."""
    params, shardings, abstract = {}, {}, {}
    for name, spec in roles.items():
      if not spec.trained:
        continue
      model_axes = tfm.logical_axes(spec.model)
      if spec.adapter is None:
        params[name] = self.weights(name)
        shardings[name] = self.param_shardings(name)
        abstract[name] = tfm.abstract_params(spec.model)
        continue
      make = lambda p, r, a=spec.adapter, axes=model_axes: lora_lib.init_lora(p, a, r, axes)
      abstract[name] = jax.eval_shape(make, tfm.abstract_params(spec.model), self._init_rngs[name])
      shardings[name] = self.role_plan(name).params(
          lora_lib.lora_logical_axes(model_axes, spec.adapter), abstract[name])
      params[name] = jax.jit(make, out_shardings=shardings[name])(self.weights(name),
                                                                  self._init_rngs[name])
      log(f"{name}: training LoRA adapters, {tfm.count_params(params[name]):,} of "
          f"{tfm.count_params(self.weights(name)):,} params")
    optimizers = roles_lib.optimizers(roles)
    state_shardings = self.plan.train_state(shardings, abstract, optimizers)
    # jit gives the state fresh buffers: it is donated every step, the frozen roles are not.
    state = jax.jit(lambda p: state_lib.init_state(p, optimizers),
                    out_shardings=state_shardings)(params)
    return state, state_shardings

  def frozen(self, roles: roles_lib.RoleSpecs) -> Dict[str, Any]:
    """Params of the roles a step reads but does not train, and the bases under adapters."""
    return {name: self.weights(name) for name, spec in roles.items()
            if not spec.trained or spec.adapter is not None}

  def frozen_shardings(self, frozen: Mapping[str, Any]) -> Dict[str, Any]:
    return {name: self.param_shardings(name) for name in frozen}

  def example_batch(self) -> Dict[str, np.ndarray]:
    """A batch-shaped example (one row) for deriving batch layouts."""
    record = {"prompt": b"0"}
    return {k: v[None] for k, v in
            pipeline.encode_example(record, self.tokenizer, self.cfg.data).items()}

  def train_iterator(self, rows: int, seed_offset: int):
    return pipeline.train_iterator(self.cfg.data, self.tokenizer, rows,
                                   seed=self.cfg.seed + seed_offset,
                                   shard_index=jax.process_index(),
                                   shard_count=jax.process_count())

  def put_batch(self, batch, prompt_buckets: Sequence[int] = ()):
    """This process's rows into the global batch layout, prompts cut to their bucket."""
    if prompt_buckets:
      longest = buckets.longest_prompt(batch)
      if jax.process_count() > 1:
        longest = int(np.max(multihost_utils.process_allgather(np.int32(longest))))
      batch = buckets.trim_prompts(batch, prompt_buckets, longest)
    return self.plan.put_process_batch(batch)

  def evaluator(self, policy: str = "policy") -> Callable:
    """``evaluate(params) -> {eval/...}``: the role's samples on the held-out split, scored by
    the judges of ``train.eval_judges``.

    A judge reading a role that is a copy not yet taken (a reward model copied from the
    policy when its phase starts) waits: evaluating it would take the copy too early.
    """
    def ready(term) -> bool:
      return all(r in self._weights or self.cfg.role_configs[r].weights.source != "role"
                 for r in term.roles)

    def evaluate(params, rows: Optional[Dict[str, np.ndarray]] = None) -> Dict[str, float]:
      judges = tuple((m, t) for m, t in self.cfg.train.eval_judges if ready(t))
      if not judges:
        return {}
      key = (policy, tuple(m for m, _ in judges))
      names = evaluation.judge_roles(judges)
      if key not in self._evaluators:
        self._evaluators[key] = evaluation.make_evaluator(
            self.model(policy), self.cfg.sampling, judges, pad_id=self.tokenizer.pad_id,
            plan=self.plan, judge_models={n: self.model(n) for n in names})
      judge_params = {n: self.weights(n) for n in names}
      record = self._evaluators[key](params, self.eval_data, self.eval_rng, judge_params, rows)
      for split, batches in self.extra_eval_data.items():
        extra = self._evaluators[key](params, batches, self.eval_rng, judge_params)
        record.update({f"eval/{split}/{k[len('eval/'):]}": v for k, v in extra.items()})
      return record
    return evaluate

  def offline_evaluator(self, name: str, spec: offline.OfflineSpec) -> Callable:
    """The objective's own metrics on the held-out split (no update), as
    ``eval/<phase>/<metric>``: preference accuracy of a DPO policy, say. Means over the
    batches, weighted by their real rows."""
    kind = spec.binding.objective.batch

    def metrics_fn(trained, frozen, batch):
      data = offline.to_sequences(batch, kind)
      score = update.scorer(trained, frozen, spec.binding, data)
      if spec.reference is not None and spec.binding.objective.needs_reference(
          spec.binding.hparams):
        data["ref_logprobs"] = score(spec.reference, ("logprobs",)).logprobs
      data, prepared = update.prepare(spec.binding, data, score)
      value, (metrics, _) = update.loss(trained, frozen, data, spec.binding)
      return {**metrics, **prepared, "loss": value}

    fn = jit_with_rules(metrics_fn, self.plan, out_shardings=self.plan.replicated)

    def evaluate(state, frozen) -> Dict[str, float]:
      totals, count = {}, 0
      for batch in self.eval_data:
        arrays = self.plan.put_global_batch({k: v for k, v in batch.items() if k != "valid"})
        values = jax.device_get(fn(state_lib.params_of(state), frozen, arrays))
        n = int(np.sum(batch["valid"]))
        for k, v in values.items():
          totals[k] = totals.get(k, 0.0) + float(v) * n
        count += n
      return {f"eval/{name}/{k}": v / max(count, 1) for k, v in totals.items()}

    return evaluate

  def _sampler_layout(self, name: str, phase: phases_lib.PhaseConfig):
    layout_cfg = self.cfg.sampler_layout
    if not layout_cfg.separate:
      return None
    plan = ShardingPlan(mesh_lib.make_mesh(layout_cfg.mesh), layout_cfg.mesh.rules)
    plan.check_batch(phase.rows_per_step, f"phases.{name}.batch_size / phases.{name}.group_size "
                     "(prompts per step) on sampler_layout.mesh")
    model = self.model(phase.role("policy"))
    abstract = tfm.abstract_params(model)
    params = plan.params(tfm.logical_axes(model), abstract)
    log(f"sampler mesh {dict(plan.mesh.shape)}; the policy is resharded into it every step")
    log(mesh_lib.sharding_report(abstract, params, "sampler params"))
    return SamplerLayout(plan, params, plan.batch(self.example_batch()))

  def build_phase(self, name: str, phase_cfg: Optional[phases_lib.PhaseConfig] = None, *,
                  make_step: Optional[Callable[[StepLayout], Callable]] = None,
                  roles: Optional[roles_lib.RoleSpecs] = None,
                  extra_state: Optional[Callable[[], Any]] = None,
                  evaluate: Optional[Callable[[Any], Dict[str, float]]] = None,
                  also_evaluate: Optional[Callable[[Any, Mapping[str, Any]], Dict[str, float]]]
                  = None, also_evaluate_at_start: bool = False) -> BuiltPhase:
    """A phase of the schedule, resumed from its checkpoint if it has one.

    By default the phase runs ``cfg.phases[name]`` with the step its objective's batch kind
    calls for. A recipe may instead give ``make_step(layout) -> step(state, batch, rng,
    frozen)`` over ``roles`` (every role it trains or reads), ``extra_state()`` for arrays of
    its own checkpointed beside the roles (``{"recipe": ...}``), and its own ``evaluate``,
    or ``also_evaluate(state, frozen)`` for metrics beside the phase's own evaluation;
    ``also_evaluate_at_start`` logs those before the phase's first update too (a fresh
    start), joining the record of the phase before it at that step (the names are the
    recipe's own, so nothing is overwritten).
    """
    cfg = self.cfg
    phase_cfg = phase_cfg or cfg.phase_configs[name]
    index = [n for n, _ in self.schedule].index(name)
    num_steps = dict(self.schedule)[name]
    roles = dict(roles or self.role_specs(phase_cfg))
    state, state_shardings = self.initial_state(roles)
    if extra_state is not None:
      extra = extra_state()
      state = {**state, **jax.device_put(extra, self.plan.replicated)}
      state_shardings = {**state_shardings,
                         **jax.tree.map(lambda _: self.plan.replicated, extra)}
    frozen = self.frozen(roles)
    own_sampler = make_step is None and phase_cfg.kind == "rl"
    layout = StepLayout(self.plan, state_shardings, self.plan.batch(self.example_batch()),
                        self.frozen_shardings(frozen),
                        sampler=self._sampler_layout(name, phase_cfg) if own_sampler else None)
    reference = phase_cfg.role("reference")
    reference = reference if reference in roles else None
    binding = self.binding(phase_cfg, roles)
    policy = phase_cfg.role("policy")
    # The policy's samples are evaluated when the phase trains it (not in a reward model's).
    trains_policy = policy in roles and roles[policy].trained
    policy_eval = lambda st, start=False: (
        self._policy_eval(st, roles, frozen, policy, phase=name, start=start)
        if trains_policy else {})
    evaluate_at_start = False
    if make_step is not None:
      step_fn = make_step(layout)
    elif phase_cfg.kind == "rl":
      spec = iteration.IterationSpec(cfg.sampling, phase_cfg.rl(), binding,
                                     self.tokenizer.pad_id)
      step_fn = iteration.make_rl_step(
          spec, decode=lambda ids: self.tokenizer.decode(ids, strict=False), layout=layout)
    else:
      spec = offline.OfflineSpec(binding, reference)
      step_fn = offline.make_offline_step(spec, layout=layout)
      if evaluate is None and phase_cfg.objective.objective.batch == "pairs":
        held_out = self.offline_evaluator(name, spec)
        evaluate = lambda st: {**policy_eval(st), **held_out(st, frozen)}
        evaluate_at_start = True  # the held-out pair metrics before any update
    evaluate = evaluate or policy_eval
    if also_evaluate is not None:
      own = evaluate
      evaluate = lambda st: {**own(st), **also_evaluate(st, frozen)}
    data = self.train_iterator(phase_cfg.rows_per_step, index)
    checkpointer = self.checkpointer(name)
    rng = self._phase_rngs[name]
    newest = checkpointer.latest_step()
    fresh = newest is None
    # A checkpoint without frozen roles (train.checkpoint_frozen=False) keeps the rebuilt ones.
    state, rng, frozen = phases_lib.resume(checkpointer, state, data, rng,
                                           frozen if cfg.train.checkpoint_frozen else None)
    if not fresh and int(jax.device_get(state["step"])) < newest:
      # The newest checkpoint was damaged: the metrics after the one restored go too.
      self.writer.rewind(self.offsets[name] + int(jax.device_get(state["step"])))
    frozen = {**self.frozen(roles), **frozen}
    if fresh and num_steps and (evaluate_at_start or trains_policy):
      # The start: held-out metrics before any update, and the starting policy's per-prompt
      # scores that later evaluations' win rates compare against (a 0-step phase evaluates
      # in run()).
      record = policy_eval(state, start=True)
      # Only a pairs phase logs its start: its held-out pair metrics exist nowhere else, and
      # its policy is the one the phase before it ended with. Any other phase's start would
      # overwrite, at the shared step, the last evaluation of the phase before it.
      if evaluate_at_start:
        self.writer.write(self.offsets[name], {**record, **held_out(state, frozen)})
    if fresh and num_steps and also_evaluate is not None and also_evaluate_at_start:
      self.writer.write(self.offsets[name], also_evaluate(state, frozen))
    buckets_ = cfg.data.prompt_buckets if phase_cfg.kind == "rl" else ()
    # RL metrics keep plain names (reward, kl, ...); offline ones are prefixed by the phase.
    phase = phases_lib.Phase(
        name.replace("_", " "), step_fn, num_steps=num_steps,
        step_offset=self.offsets[name], log_every=cfg.train.log_every,
        eval_every=cfg.train.eval_every, evaluate=evaluate,
        metric_prefix="" if phase_cfg.kind == "rl" else f"{name}/",
        put_batch=lambda batch: self.put_batch(batch, buckets_),
        max_consecutive_skips=cfg.train.max_consecutive_skips)
    return BuiltPhase(name, phase_cfg, phase, state, frozen, data, rng, checkpointer, roles)

  def build_offline_phase(self, name: str, make_step: Callable[[StepLayout, offline.OfflineSpec],
                                                               Callable],
                          also_evaluate_for: Optional[Callable[[roles_lib.RoleSpecs],
                                                               Callable]] = None,
                          also_evaluate_at_start: bool = False) -> BuiltPhase:
    """Offline phase ``name`` with a recipe's own step, ``make_step(layout, learner)``: the
    learner is the phase's objective over its roles, checked (a warm start in a recipe's
    form: RISE's dialogue, the debate's). ``also_evaluate_for(roles)`` gives the recipe's
    metrics beside the phase's own (``build_phase``)."""
    phase_cfg = self.cfg.phase_configs[name]
    roles = self.role_specs(phase_cfg)
    learner = offline.OfflineSpec(self.binding(phase_cfg, roles))
    learner.check()
    return self.build_phase(
        name, phase_cfg, roles=roles, make_step=lambda layout: make_step(layout, learner),
        also_evaluate=also_evaluate_for(roles) if also_evaluate_for else None,
        also_evaluate_at_start=also_evaluate_at_start)

  def per_row_evaluator(self, per_row: Callable, summarize: Callable,
                        policy: Union[str, Tuple[str, ...]]
                        ) -> Callable[[roles_lib.RoleSpecs], Callable]:
    """``for_roles(roles) -> evaluate(state, frozen)`` for a recipe's held-out metrics:
    ``per_row(params, batch, rng)`` (compiled once, whichever phase's roles hold the policy)
    returns arrays with a leading row axis; the valid rows of every batch of a split, joined,
    go to ``summarize(rows) -> {"eval/<name>": value}``, logged as they are for the test split
    and as ``eval/<split>/<name>`` for each extra one. ``params`` are the ``policy`` role's,
    or, for a tuple of roles, a dict of each one's."""
    plan = self.plan
    score = jit_with_rules(per_row, plan, out_shardings=plan.replicated)
    splits = {"": self.eval_data, **{f"{k}/": v for k, v in self.extra_eval_data.items()}}

    def for_roles(roles):
      def evaluate(state, frozen):
        if isinstance(policy, tuple):
          params = {r: self.policy_weights(state, roles, frozen, r) for r in policy}
        else:
          params = self.policy_weights(state, roles, frozen, policy)
        out = {}
        for prefix, batches in splits.items():
          rows: Dict[str, List[np.ndarray]] = {}
          for i, batch in enumerate(batches):
            arrays = plan.put_global_batch({k: v for k, v in batch.items() if k != "valid"})
            got = jax.device_get(score(params, arrays, jax.random.fold_in(self.eval_rng, i)))
            valid = np.asarray(batch["valid"])
            for name, value in got.items():
              rows.setdefault(name, []).append(np.asarray(value)[valid])
          summary = summarize({k: np.concatenate(v) for k, v in rows.items()})
          out.update({k.replace("eval/", f"eval/{prefix}", 1): v for k, v in summary.items()})
        return out
      return evaluate
    return for_roles

  def policy_weights(self, state, roles: roles_lib.RoleSpecs, frozen: Mapping[str, Any],
                     role: str = "policy"):
    """A role's weights as a state has them: trained params, or base + merged adapters."""
    trained = state_lib.params_of(state)
    if role not in roles:
      return self.weights(role)
    if roles[role].adapter is None:
      return roles_lib.effective_params(role, trained, frozen, roles)
    merge = jax.jit(functools.partial(roles_lib.effective_params, role, roles=roles))
    return merge(trained, frozen)

  def _policy_eval(self, state, roles, frozen, policy: str = "policy",
                   phase: Optional[str] = None, start: bool = False) -> Dict[str, float]:
    """The policy's held-out evaluation. Within ``phase``, ``start`` keeps the starting
    policy's per-prompt scores (in the workdir, for a resume); later evaluations log their win
    rate against them as ``eval/<phase>/<metric>_win_rate_vs_start``."""
    if policy not in self.cfg.role_configs or "lm" not in self.model(policy).heads:
      return {}
    rows: Dict[str, np.ndarray] = {}
    record = self.evaluator(policy)(self.policy_weights(state, roles, frozen, policy), rows)
    if phase is None or not rows:
      return record
    if start:
      self._save_start_scores(phase, rows)
      return record
    baseline = self._start_scores(phase)
    if baseline is None:
      return record  # resumed without the start's scores: no baseline rather than a wrong one
    for metric, values in rows.items():
      if metric in baseline and len(baseline[metric]) == len(values):
        record[f"eval/{phase}/{metric}_win_rate_vs_start"] = evaluation.win_rate(
            values, baseline[metric])
    return record

  def _start_scores_path(self, phase: str) -> str:
    return os.path.join(self.workdir, "eval_start", f"{phase}.json")

  def _start_scores(self, phase: str) -> Optional[Dict[str, np.ndarray]]:
    """The phase's starting policy's per-prompt sampled scores, kept across a resume."""
    if phase not in self._start_rows:
      path = self._start_scores_path(phase)
      if not os.path.exists(path):
        log(f"{path} is missing: phase {phase!r} logs no win rate against its start")
        self._start_rows[phase] = None
        return None
      try:
        with open(path) as f:
          self._start_rows[phase] = {k: np.asarray(v, np.float64)
                                     for k, v in json.load(f).items()}
      except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable starting scores ({e}); delete it to rescore "
                         "from this checkpoint's policy") from None
    return self._start_rows[phase]

  def _save_start_scores(self, phase: str, rows: Mapping[str, np.ndarray]) -> None:
    self._start_rows[phase] = {k: np.asarray(v) for k, v in rows.items()}
    if jax.process_index() == 0:
      path = self._start_scores_path(phase)
      os.makedirs(os.path.dirname(path), exist_ok=True)
      data = json.dumps({k: [float(x) for x in v] for k, v in rows.items()}).encode()
      metrics_lib.atomic_write(path, lambda f: f.write(data))

  def run(self, built: BuiltPhase):
    """Runs a built phase to its end; the roles it trained take their new weights. A phase of
    0 steps evaluates once, at its place on the metrics axis."""
    if built.phase.num_steps == 0:
      record = built.phase.evaluate(built.state)
      if record:
        self.writer.write(built.phase.step_offset, record)
      return built.state
    state = phases_lib.run_phase(built.phase, built.state, built.data, built.rng, built.frozen,
                                 built.checkpointer, self.writer,
                                 save_frozen=self.cfg.train.checkpoint_frozen)
    for name, spec in built.roles.items():
      if spec.trained:
        self.set_weights(name, self.policy_weights(state, built.roles, built.frozen, name))
    return state

  def run_phase(self, name: str):
    return self.run(self.build_phase(name))

  def evaluate_initial(self, policy: str = "policy") -> None:
    """Logs the role's held-out evaluation at step 0 (when no phase has run yet)."""
    if self._resume_step() < 0 and policy in self.cfg.role_configs:
      record = self.evaluator(policy)(self.weights(policy))
      if record:
        self.writer.write(0, record)

  # ---- the end ------------------------------------------------------------------------------

  def finish(self, title: str = "") -> Dict[str, Any]:
    """Closes the writer, exports HF roles, writes summary.json and curves.png."""
    self.writer.close()
    for name, role in self.cfg.roles:
      source = roles_lib.hf_source(name, self.cfg.role_configs)
      if role.export_hf and source is not None:
        self._export_hf(name, source)
    if jax.process_index():
      return {}
    summary = self._write_summary(title)
    self.writer.finish_wandb(summary, [os.path.join(self.workdir, "curves.png")])
    return summary

  def _export_hf(self, name: str, template: str) -> None:
    from rlalign.models import hf
    export_dir = os.path.join(self.workdir, "hf" if name == "policy" else f"hf_{name}")
    params = self.weights(name)
    if jax.process_count() > 1:
      params = multihost_utils.process_allgather(params, tiled=True)
    if jax.process_index() == 0:
      hf.save_hf_checkpoint(jax.device_get(params), self.model(name), export_dir,
                            hf_config_template=template,
                            tokenizer_dir=self.cfg.data.tokenizer_dir or template,
                            overwrite=True, drop_score_bias=True)
      log(f"exported role {name!r} in Hugging Face format to {export_dir}")

  def _write_summary(self, title: str) -> Dict[str, Any]:
    """summary.json (each phase's last evaluation, and held-out figures before and after RL)
    and curves.png of every logged metric."""
    path = os.path.join(self.workdir, "metrics.jsonl")
    records = metrics_lib.read_jsonl(path)
    evals = [r for r in records if any(k.startswith("eval/") for k in r)]
    # The policy's judges log eval/<metric>; a phase's own held-out metrics eval/<phase>/...
    splits = tuple(f"eval/{split}/" for split in self.cfg.data.eval_splits)
    pick = lambda record, phase=None: {
        k: v for k, v in record.items() if k.startswith("eval/")
        and ("/" not in k[5:] or k.startswith(splits)
             or (phase is not None and k.startswith(f"eval/{phase}/")))}
    summary: Dict[str, Any] = {"status": "completed", "phases": {}}
    for name, steps in self.schedule:
      start, end = self.offsets[name], self.offsets[name] + steps
      mine = [r for r in evals if start < r["step"] <= end]
      summary["phases"][name] = {"steps": steps, "eval": pick(mine[-1], name) if mine else {}}
      opening = [r for r in evals if r["step"] == start]
      if opening and steps:
        summary["phases"][name]["eval_at_start"] = pick(opening[0], name)
    rl = [name for name, _ in self.schedule
          if name in self.cfg.phase_configs and self.cfg.phase_configs[name].kind == "rl"]
    if rl and evals:
      start = self.offsets[rl[0]]
      before = [r for r in evals if r["step"] <= start] or evals[:1]
      summary["before_rl"] = pick(before[-1])
      summary["after_rl"] = pick(evals[-1])
    summary["params"] = {name: tfm.count_params(self.weights(name))
                         for name in sorted(self.cfg.role_configs)}
    # A non-finite metric (an AUROC over one class) is null, as in metrics.jsonl.
    summary = json.loads(json.dumps(summary), parse_constant=lambda _: None)
    with open(os.path.join(self.workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
    if records:
      metrics_lib.plot_curves(path, os.path.join(self.workdir, "curves.png"),
                              keys=plot_keys(records), title=title)
    return summary



def fused_spec(cfg: ExperimentConfig, phase_name: str, roles: roles_lib.RoleSpecs, pad_id: int,
               why: str) -> iteration.IterationSpec:
  """The RL phase ``phase_name``'s iteration over ``roles``, checked, for a recipe whose one
  program scores every reward in-graph (``why`` says what it scores there)."""
  phase = cfg.phase_configs[phase_name]
  binding = update.Binding(phase.objective.objective, phase.objective.hparams, roles,
                           phase.slot_map, phase.epochs, phase.minibatches)
  spec = iteration.IterationSpec(cfg.sampling, phase.rl(), binding, pad_id)
  if not spec.fused:
    raise ValueError(f"phases.{phase_name}.rewards: {why} inside its one program, so every "
                     "reward must be in-graph")
  spec.check()
  return spec


def write_failed_summary(workdir: str, error: str) -> None:
  """summary.json of a run that stopped on an error: ``"status": "failed"`` and why, so no
  reader mistakes it for a finished run's (process 0 writes it)."""
  if jax.process_index():
    return
  data = json.dumps({"status": "failed", "error": error}, indent=2).encode()
  metrics_lib.atomic_write(os.path.join(os.path.abspath(workdir), "summary.json"),
                           lambda f: f.write(data))


def plot_keys(records: Sequence[Mapping[str, Any]]) -> List[str]:
  """Every metric the run logged, evaluations first, timings last."""
  seen = list(dict.fromkeys(k for r in records for k in r if k != "step"))
  timing = lambda k: k.endswith(("step_time_s", "tokens_per_s", "reshard_s"))
  return ([k for k in seen if k.startswith("eval/")]
          + [k for k in seen if not k.startswith("eval/") and not timing(k)]
          + [k for k in seen if timing(k)])
