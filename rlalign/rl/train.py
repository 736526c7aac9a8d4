"""The experiment driver: data, warm start, RL, evaluation, checkpoints and metrics.

A run is two phases over one workdir, each resumable on its own:

  warm start   supervised steps on demonstrations   <workdir>/checkpoints/warm_start
  RL           ``rl.steps`` RL iterations            <workdir>/checkpoints/rl

The reference policy is the warm start's result. Metrics share one global step axis (warm-start
steps first) in ``metrics.jsonl`` and TensorBoard; ``curves.png`` and ``summary.json`` are
written at the end. Calling :func:`train` again on the same workdir resumes where it stopped.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any, Callable, Dict, Mapping, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils

from rlalign import checkpoint as ckpt_lib
from rlalign import metrics as metrics_lib
from rlalign.config import ExperimentConfig, to_dict
from rlalign.data import buckets, pipeline, tokenizer as tok_lib
from rlalign.models import lora as lora_lib
from rlalign.models import transformer as tfm
from rlalign.parallel import mesh as mesh_lib
from rlalign.parallel.sharding import ShardingPlan
from rlalign.rl import evaluation, iteration, supervised
from rlalign.rl import state as state_lib

PLOT_KEYS = ("eval/pass@1_greedy", "eval/pass@1_sampled", "reward", "accuracy", "kl", "entropy",
             "response_length", "clip_frac", "zero_variance_groups", "warm_start/nll")


def _check_fits(cfg: ExperimentConfig, tokenizer: tok_lib.CharTokenizer) -> None:
  if cfg.model.vocab_size < tokenizer.vocab_size:
    raise ValueError(f"model.vocab_size ({cfg.model.vocab_size}) is smaller than the "
                     f"tokenizer's vocabulary ({tokenizer.vocab_size}) for data.task="
                     f"{cfg.data.task!r}")
  if cfg.sampling.max_new_tokens < cfg.data.max_answer_len:
    raise ValueError(f"sampling.max_new_tokens ({cfg.sampling.max_new_tokens}) must be >= "
                     f"data.max_answer_len ({cfg.data.max_answer_len}) or no answer can match")


def _check_batches(cfg: ExperimentConfig, plan: ShardingPlan) -> None:
  plan.check_batch(cfg.rl.prompts_per_step, "rl.batch_size / rl.group_size (prompts per step)")
  plan.check_batch(cfg.rl.batch_size // cfg.rl.minibatches,
                   "rl.batch_size / rl.minibatches (rollouts per minibatch)")
  plan.check_batch(cfg.train.eval_batch_size, "train.eval_batch_size")
  if cfg.warm_start.steps:
    plan.check_batch(cfg.warm_start.batch_size, "warm_start.batch_size")
  for key, size in (("rl.batch_size / rl.group_size", cfg.rl.prompts_per_step),
                    ("warm_start.batch_size", cfg.warm_start.batch_size)):
    if size % jax.process_count():
      raise ValueError(f"{key} ({size}) must divide over the {jax.process_count()} processes")


def _example(cfg: ExperimentConfig, tokenizer) -> Dict[str, np.ndarray]:
  """A batch-shaped example (one row) for deriving batch layouts."""
  record = {"prompt": b"0", "answer": b"", "demonstration": b""}
  return {k: v[None] for k, v in pipeline.encode_example(record, tokenizer, cfg.data).items()}


def _replicated_keys(seed: int, num: int, plan: ShardingPlan):
  """``num`` keys split from the run's root key, as arrays every process holds in full."""
  data = np.asarray(jax.random.key_data(jax.random.split(jax.random.key(seed), num)))
  return [jax.random.wrap_key_data(jax.make_array_from_callback(
      d.shape, plan.replicated, lambda index, d=d: d[index])) for d in data]


def _sampler_layout(cfg: ExperimentConfig, tokenizer, abstract):
  if not cfg.roles.separate_sampler:
    return None
  plan = ShardingPlan(mesh_lib.make_mesh(cfg.roles.sampler_mesh), cfg.roles.sampler_mesh.rules)
  plan.check_batch(cfg.rl.prompts_per_step,
                   "rl.batch_size / rl.group_size (prompts per step) on roles.sampler_mesh")
  params = plan.params(tfm.logical_axes(cfg.model), abstract)
  _log(f"sampler mesh {dict(plan.mesh.shape)}; the policy is resharded into it every step")
  _log(mesh_lib.sharding_report(abstract, params, "sampler params"))
  return iteration.SamplerLayout(plan, params, plan.batch(_example(cfg, tokenizer)))


def _initial_params(cfg: ExperimentConfig, shardings, rng):
  if not cfg.init.hf_checkpoint:
    return jax.jit(functools.partial(tfm.init, cfg.model), out_shardings=shardings)(rng)
  from rlalign.models import hf  # safetensors and the family tables only when needed
  loaded_cfg, params = hf.load_hf_checkpoint(cfg.init.hf_checkpoint, dtype=cfg.model.param_dtype,
                                             shardings=shardings, heads=cfg.model.heads)
  # The checkpoint fixes the architecture; only numerics (dtypes, remat) may differ.
  numerics = ("dtype", "param_dtype", "remat")
  theirs = {k: v for k, v in dataclasses.asdict(loaded_cfg).items() if k not in numerics}
  ours = {k: v for k, v in dataclasses.asdict(cfg.model).items() if k not in numerics}
  diff = {k: (ours[k], theirs[k]) for k in ours if ours[k] != theirs[k]}
  if diff:
    raise ValueError(f"model config differs from {cfg.init.hf_checkpoint}/config.json: "
                     + ", ".join(f"model.{k}={a!r} vs {b!r}" for k, (a, b) in diff.items()))
  return params


def _with_stop_token(cfg: ExperimentConfig, eos_id: int) -> ExperimentConfig:
  stops = cfg.sampling.stop_tokens
  if eos_id in stops:
    return cfg
  return dataclasses.replace(cfg, sampling=dataclasses.replace(cfg.sampling,
                                                               stop_tokens=stops + (eos_id,)))


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _log(message: str) -> None:
  if jax.process_index() == 0:
    print(message, flush=True)


@dataclasses.dataclass
class Phase:
  """One resumable loop of ``step(state, batch, rng, frozen) -> (state, metrics)``.

  Each step's metrics must include ``tokens``, the tokens it processed (trained on, or
  generated), for the tokens/s figure.
  """
  name: str
  step_fn: Callable
  num_steps: int
  step_offset: int  # added to the phase's step on the shared metrics axis
  checkpoint_every: int
  log_every: int
  eval_every: int = 0
  evaluate: Optional[Callable[[Any], Dict[str, float]]] = None
  metric_prefix: str = ""
  put_batch: Callable[[Mapping[str, np.ndarray]], Any] = lambda batch: batch


def run_phase(phase: Phase, state, data_iter, rng: jax.Array, frozen: Mapping[str, Any],
              checkpointer: ckpt_lib.Checkpointer, writer: metrics_lib.MetricsWriter):
  """Runs ``phase`` from ``state['step']`` to ``phase.num_steps``, checkpointing as it goes."""
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
        record.update(phase.evaluate(state["params"]))
      writer.write(phase.step_offset + step, record)
      bar.set_postfix({k: f"{v:.3g}" for k, v in record.items()
                       if k.split("/")[-1] in ("loss", "reward", "accuracy", "pass@1_greedy")})
      window_start, window_steps, window_tokens = time.perf_counter(), 0, 0.0
    if checkpointer.should_save(step) or last:
      checkpointer.save(step, {**state, "rng": jax.random.key_data(rng)},
                        data_iter.get_state(), force=last)
    bar.update(1)
  bar.close()
  checkpointer.wait_until_finished()
  return state


def _bucketed(batch: Mapping[str, np.ndarray], prompt_buckets) -> Mapping[str, np.ndarray]:
  """Prompts cut to their length bucket, the same on every host."""
  if not prompt_buckets:
    return batch
  longest = buckets.longest_prompt(batch)
  if jax.process_count() > 1:
    longest = int(np.max(multihost_utils.process_allgather(np.int32(longest))))
  return buckets.trim_prompts(batch, prompt_buckets, longest)


def _resume(checkpointer: ckpt_lib.Checkpointer, state, data_iter, rng):
  """Restores the latest checkpoint into ``state`` and the iterator, if there is one."""
  if checkpointer.latest_step() is None:
    return state, rng
  target = _abstract({**state, "rng": jax.random.key_data(rng)})
  restored, data_state = checkpointer.restore(target)
  data_iter.set_state(data_state)
  rng = jax.random.wrap_key_data(restored.pop("rng"))
  return restored, rng


def train(cfg: ExperimentConfig, workdir: str) -> Dict[str, Any]:
  """Runs (or resumes) the experiment in ``workdir``; returns the summary it writes there."""
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  if not cfg.data.data_dir:
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(
        cfg.data, data_dir=os.path.join(workdir, "tfds")))
  cfg.validate()
  tokenizer = tok_lib.tokenizer_for(cfg.data)
  cfg = _with_stop_token(cfg, tokenizer.eos_id)
  _check_fits(cfg, tokenizer)

  # The mesh and every layout are checked before anything compiles.
  plan = ShardingPlan(mesh_lib.make_mesh(cfg.mesh), cfg.mesh.rules)
  _check_batches(cfg, plan)
  abstract = tfm.abstract_params(cfg.model)
  param_shardings = plan.params(tfm.logical_axes(cfg.model), abstract)
  _log(f"mesh {dict(plan.mesh.shape)} over {jax.device_count()} devices in "
       f"{jax.process_count()} process(es)")
  _log(mesh_lib.sharding_report(abstract, param_shardings, "params"))

  # Everything about the data is checked before anything compiles.
  # One host builds the dataset; the others wait, then reuse it.
  if jax.process_index() == 0:
    pipeline.prepare(cfg.data)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("rlalign: data prepared")
    pipeline.prepare(cfg.data)
  for split in ("train", "test"):
    pipeline.validate_split(pipeline.load_split(cfg.data, split), tokenizer, cfg.data, split)
  eval_data = pipeline.eval_batches(cfg.data, tokenizer, "test", cfg.train.eval_batch_size)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(to_dict(cfg), f, indent=2)

  init_rng, warm_rng, rl_rng, eval_rng = _replicated_keys(cfg.seed, 4, plan)
  warm_dir = os.path.join(workdir, "checkpoints", "warm_start")
  rl_dir = os.path.join(workdir, "checkpoints", "rl")
  rl_ckpt = ckpt_lib.Checkpointer(rl_dir, save_every=cfg.train.checkpoint_every,
                                  max_to_keep=cfg.train.max_checkpoints)
  warm_steps = cfg.warm_start.steps
  resume_step = rl_ckpt.latest_step()
  resume_step = None if resume_step is None else warm_steps + resume_step
  warm_ckpt = ckpt_lib.Checkpointer(warm_dir, save_every=cfg.train.checkpoint_every,
                                    max_to_keep=cfg.train.max_checkpoints)
  if resume_step is None:
    resume_step = warm_ckpt.latest_step()
  if resume_step is None:
    resume_step = -1  # nothing was checkpointed: metrics from an earlier attempt are stale
  writer = metrics_lib.MetricsWriter(workdir, resume_step=resume_step,
                                     enabled=jax.process_index() == 0)
  evaluator = evaluation.make_evaluator(cfg.model, cfg.sampling, pad_id=tokenizer.pad_id,
                                        plan=plan)
  evaluate = lambda params: evaluator(params, eval_data, eval_rng)

  # Phase 1: warm start on demonstrations. Params are created (or loaded) already sharded.
  params = _initial_params(cfg, param_shardings, init_rng)
  put_batch = plan.put_process_batch
  shard = dict(shard_index=jax.process_index(), shard_count=jax.process_count())
  if warm_steps:
    warm_opt = state_lib.make_optimizer(cfg.warm_start.optimizer)
    warm_shardings = plan.train_state(param_shardings, abstract, warm_opt)
    state = jax.jit(lambda p: state_lib.init_state(p, warm_opt),
                    out_shardings=warm_shardings)(params)
    warm_iter = pipeline.train_iterator(cfg.data, tokenizer, cfg.warm_start.batch_size,
                                        seed=cfg.seed, **shard)
    state, _ = _resume(warm_ckpt, state, warm_iter, warm_rng)
    layout = iteration.StepLayout(plan, warm_shardings, plan.batch(_example(cfg, tokenizer)), {})
    phase = Phase("warm start", supervised.make_supervised_step(cfg.model, warm_opt,
                                                                layout=layout),
                  num_steps=warm_steps, step_offset=0, checkpoint_every=cfg.train.checkpoint_every,
                  log_every=cfg.train.log_every, evaluate=evaluate, metric_prefix="warm_start/",
                  put_batch=put_batch)
    state = run_phase(phase, state, warm_iter, warm_rng, {}, warm_ckpt, writer)
    params = state["params"]
  else:
    writer.write(0, evaluate(params))

  # Phase 2: RL from the warm start, which is also the frozen reference. The reference shares
  # the policy's mesh and layout; the sampler reads the policy's own arrays unless
  # roles.separate_sampler gives it a layout of its own.
  rl_opt = state_lib.make_optimizer(cfg.optimizer)
  adapter = cfg.adapter.lora() if cfg.adapter.lora_rank else None
  spec = iteration.IterationSpec(model=cfg.model, sampling=cfg.sampling, rl=cfg.rl,
                                 objective=cfg.objective.objective, hparams=cfg.objective.hparams,
                                 optimizer=rl_opt, pad_id=tokenizer.pad_id, adapter=adapter)
  frozen, frozen_shardings = {"reference": params}, {"reference": param_shardings}
  trainable, trainable_shardings, trainable_abstract = params, param_shardings, abstract
  if adapter is not None:
    # The base is the reference: one set of arrays serves both.
    frozen["base"], frozen_shardings["base"] = params, param_shardings
    model_axes = tfm.logical_axes(cfg.model)
    make = lambda p, r: lora_lib.init_lora(p, adapter, r, model_axes)
    trainable_abstract = jax.eval_shape(make, abstract, init_rng)
    trainable_shardings = plan.params(lora_lib.lora_logical_axes(model_axes, adapter),
                                      trainable_abstract)
    trainable = jax.jit(make, out_shardings=trainable_shardings)(params, init_rng)
    _log(f"training LoRA adapters: {tfm.count_params(trainable):,} of "
         f"{tfm.count_params(params):,} params")
  rl_shardings = plan.train_state(trainable_shardings, trainable_abstract, rl_opt)
  # jit gives the state fresh buffers: it is donated every step, the reference is not.
  state = jax.jit(lambda p: state_lib.init_state(p, rl_opt),
                  out_shardings=rl_shardings)(trainable)
  rl_iter = pipeline.train_iterator(cfg.data, tokenizer, cfg.rl.prompts_per_step,
                                    seed=cfg.seed + 1, **shard)
  state, rl_rng = _resume(rl_ckpt, state, rl_iter, rl_rng)
  layout = iteration.StepLayout(plan, rl_shardings, plan.batch(_example(cfg, tokenizer)),
                                frozen_shardings,
                                sampler=_sampler_layout(cfg, tokenizer, abstract))
  step_fn = iteration.make_rl_step(
      spec, decode=lambda ids: tokenizer.decode(ids, strict=False), layout=layout)
  policy = jax.jit(lambda t, f: iteration.policy_params(t, f, spec))
  phase = Phase("rl", step_fn, num_steps=cfg.train.steps, step_offset=warm_steps,
                checkpoint_every=cfg.train.checkpoint_every, log_every=cfg.train.log_every,
                eval_every=cfg.train.eval_every,
                put_batch=lambda batch: put_batch(_bucketed(batch, cfg.data.prompt_buckets)),
                evaluate=lambda trainable: evaluate(policy(trainable, frozen)))
  state = run_phase(phase, state, rl_iter, rl_rng, frozen, rl_ckpt, writer)
  writer.close()
  if cfg.init.hf_checkpoint and cfg.init.export_hf:
    _export_hf(cfg, workdir, policy(state["params"], frozen))
  if jax.process_index():
    return {}
  return _write_summary(cfg, workdir, tfm.count_params(params))


def _export_hf(cfg: ExperimentConfig, workdir: str, params) -> None:
  from rlalign.models import hf
  export_dir = os.path.join(workdir, "hf")
  if jax.process_count() > 1:
    params = multihost_utils.process_allgather(params, tiled=True)
  if jax.process_index() == 0:
    hf.save_hf_checkpoint(jax.device_get(params), cfg.model, export_dir,
                          hf_config_template=cfg.init.hf_checkpoint,
                          tokenizer_dir=cfg.data.tokenizer_dir or cfg.init.hf_checkpoint,
                          overwrite=True)
    _log(f"exported the policy in Hugging Face format to {export_dir}")


def _write_summary(cfg: ExperimentConfig, workdir: str, num_params: int) -> Dict[str, Any]:
  """summary.json (held-out pass@1 before and after RL) and curves.png."""
  records = metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  evals = [r for r in records if "eval/pass@1_greedy" in r]
  warm_steps = cfg.warm_start.steps
  # Before RL: the warm start's last evaluation, or step 0's without a warm start.
  before = [r for r in evals if r["step"] == warm_steps] or evals[:1]
  pick = lambda record: {k: v for k, v in record.items() if k.startswith("eval/")}
  summary = {
      "before_rl": pick(before[0]),
      "after_rl": pick(evals[-1]),
      "rl_steps": cfg.train.steps,
      "warm_start_steps": warm_steps,
      "params": num_params,
  }
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  metrics_lib.plot_curves(os.path.join(workdir, "metrics.jsonl"),
                          os.path.join(workdir, "curves.png"), keys=PLOT_KEYS,
                          title=f"{cfg.objective.name} on {cfg.data.task}")
  return summary
