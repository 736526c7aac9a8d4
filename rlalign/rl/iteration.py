"""One RL iteration, built from small pure parts.

  rollout(params, batch, rng)            sample G completions per prompt, in-graph
  score(rollouts)                        every in-graph reward, per source
  learn(state, rollouts, scores, rng)    advantages, reference log-probs, then epochs x
                                         minibatches of objective gradients

:func:`make_rl_step` composes them into ``step(state, batch, rng) -> (state, metrics)``. When
every reward is in-graph the composition is one jitted program with the state donated; with a
host reward the step splits into jitted ``rollout`` and ``learn`` around the Python call.
Algorithms differ in the objective, the advantage estimator and the rewards, never here.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils

from rlalign.models import lora as lora_lib
from rlalign.models import transformer as tfm
from rlalign.objectives import advantages as adv_lib
from rlalign.objectives import base as obj_base
from rlalign.parallel.logical import axis_rules
from rlalign.parallel.sharding import ShardingPlan
from rlalign.rewards import base as reward_base
from rlalign.rl import state as state_lib
from rlalign.sampling import sampler

Batch = Mapping[str, jax.Array]
Metrics = Dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class RLConfig:
  batch_size: int = 256  # rollouts per iteration: prompts_per_step * group_size
  group_size: int = 8
  epochs: int = 1
  minibatches: int = 1
  advantage: str = "group_norm"
  rewards: Tuple[Tuple[str, float], ...] = (("exact_match", 1.0),)
  # Completion widths the update may run at: it runs at the smallest that holds the batch's
  # longest completion, chosen in-graph (lax.switch), so short rollouts train on short
  # arrays in the same single program. () always trains at sampling.max_new_tokens.
  response_buckets: Tuple[int, ...] = ()

  @property
  def prompts_per_step(self) -> int:
    return self.batch_size // self.group_size

  def validate(self, prefix: str = "rl") -> None:
    for name in ("batch_size", "group_size", "epochs", "minibatches"):
      if getattr(self, name) <= 0:
        raise ValueError(f"{prefix}.{name} must be positive, got {getattr(self, name)}")
    if self.group_size < 2:
      raise ValueError(f"{prefix}.group_size must be >= 2 for group-relative advantages, "
                       f"got {self.group_size}")
    if self.batch_size % self.group_size:
      raise ValueError(f"{prefix}.batch_size ({self.batch_size}) must be a multiple of "
                       f"{prefix}.group_size ({self.group_size}): each prompt is sampled "
                       f"group_size times")
    if self.batch_size % self.minibatches:
      raise ValueError(f"{prefix}.minibatches ({self.minibatches}) must divide "
                       f"{prefix}.batch_size ({self.batch_size})")
    adv_lib.get(self.advantage)
    widths = self.response_buckets
    if any(b <= 0 for b in widths) or list(widths) != sorted(set(widths)):
      raise ValueError(f"{prefix}.response_buckets must be strictly increasing positive "
                       f"lengths, got {widths}")
    if not self.rewards:
      raise ValueError(f"{prefix}.rewards must name at least one reward")
    for name, _ in self.rewards:
      reward_base.get(name)


@dataclasses.dataclass(frozen=True)
class IterationSpec:
  """Everything static about the iteration, bound once with functools.partial."""
  model: tfm.ModelConfig
  sampling: sampler.SamplingConfig
  rl: RLConfig
  objective: obj_base.Objective
  hparams: Any
  optimizer: optax.GradientTransformation
  pad_id: int = 0
  adapter: Optional[lora_lib.LoRAConfig] = None  # train LoRA adapters on frozen["base"]

  @property
  def rewards(self) -> Tuple[reward_base.Reward, ...]:
    return tuple(reward_base.get(name) for name, _ in self.rl.rewards)

  @property
  def fused(self) -> bool:
    return all(r.in_graph for r in self.rewards)


def policy_params(trainable, frozen: Mapping[str, Any], spec: IterationSpec):
  """The policy's weights: the trained params, or the frozen base with adapters merged in."""
  if spec.adapter is None:
    return trainable
  return lora_lib.merge(frozen["base"], trainable, spec.adapter)


def rollout(params, batch: Batch, rng: jax.Array, spec: IterationSpec) -> Dict[str, jax.Array]:
  """Samples ``group_size`` completions of every prompt; each group is contiguous."""
  G = spec.rl.group_size
  repeat = lambda x: jnp.repeat(x, G, axis=0)
  prompt_tokens, prompt_mask = repeat(batch["prompt_tokens"]), repeat(batch["prompt_mask"])
  out = sampler.sample(params, prompt_tokens, prompt_mask, rng, spec.model, spec.sampling,
                       spec.pad_id)
  stop = jnp.asarray(spec.sampling.stop_tokens or (-1,), jnp.int32)
  return {
      "prompt_tokens": prompt_tokens,
      "prompt_mask": prompt_mask,
      "completion_tokens": out.tokens,
      "completion_mask": out.mask,
      "completion_stopped": jnp.any(jnp.isin(out.tokens, stop) & out.mask, axis=1),
      "logprobs": out.logprobs,
      "answer_tokens": repeat(batch["answer_tokens"]),
      "answer_mask": repeat(batch["answer_mask"]),
  }


def completion_outputs(params, prompt_tokens, prompt_mask, completion_tokens, completion_mask,
                       model_cfg: tfm.ModelConfig) -> obj_base.PolicyOutputs:
  """Per-token log-probs and entropies of the completion under ``params``, [B, N]."""
  P = prompt_tokens.shape[1]
  tokens = jnp.concatenate([prompt_tokens, completion_tokens], axis=1)
  mask = jnp.concatenate([prompt_mask, completion_mask], axis=1)
  logprobs, entropy = tfm.token_logprobs(params, tokens, mask, model_cfg, with_entropy=True)
  return obj_base.PolicyOutputs(logprobs[:, P - 1:], entropy[:, P - 1:])


def score(rollouts: Batch, spec: IterationSpec) -> Dict[str, jax.Array]:
  return reward_base.score_in_graph(spec.rewards, rollouts)


COMPLETION_KEYS = ("completion_tokens", "completion_mask", "logprobs")


def response_widths(spec: IterationSpec) -> Tuple[int, ...]:
  """The completion widths ``learn`` compiles for: the buckets below max_new_tokens, then it."""
  n = spec.sampling.max_new_tokens
  return tuple(b for b in spec.rl.response_buckets if b < n) + (n,)


def learn(state: state_lib.TrainState, rollouts: Batch, scores: Mapping[str, jax.Array],
          rng: jax.Array, frozen: Mapping[str, Any], spec: IterationSpec
          ) -> Tuple[state_lib.TrainState, Metrics]:
  """Advantages, reference log-probs and ``epochs x minibatches`` optimizer updates.

  With ``rl.response_buckets``, the completions are cut to the smallest bucket that holds the
  longest one before the reference and the policy score them: every column cut is padding after every row's stop,
  which causal attention never lets an earlier token see, so the update is the same at a
  fraction of the cost.
  """
  widths = response_widths(spec)
  if len(widths) == 1:
    return _learn(state, rollouts, scores, rng, frozen, spec)
  longest = jnp.max(jnp.sum(rollouts["completion_mask"], axis=1))
  index = jnp.searchsorted(jnp.asarray(widths), longest, side="left")

  def at_width(width):
    def branch(state, rollouts, scores, rng, frozen):
      cut = {k: (v[:, :width] if k in COMPLETION_KEYS else v) for k, v in rollouts.items()}
      return _learn(state, cut, scores, rng, frozen, spec)
    return branch

  state, metrics = jax.lax.switch(index, [at_width(w) for w in widths], state, rollouts,
                                  scores, rng, frozen)
  return state, {**metrics, "response_bucket": jnp.asarray(widths)[index].astype(jnp.float32)}


def _learn(state, rollouts, scores, rng, frozen, spec: IterationSpec):
  rl = spec.rl
  total = reward_base.combine(rl.rewards, scores)
  advantages = adv_lib.get(rl.advantage)(total, rl.group_size)
  mask = rollouts["completion_mask"]
  data = {
      "prompt_tokens": rollouts["prompt_tokens"],
      "prompt_mask": rollouts["prompt_mask"],
      "completion_tokens": rollouts["completion_tokens"],
      "mask": mask,
      "old_logprobs": rollouts["logprobs"],
      "advantages": advantages,
  }
  # The reference is scored whenever one is given, so KL is logged even when the
  # objective does not penalise it.
  if "reference" in frozen:
    ref = completion_outputs(frozen["reference"], rollouts["prompt_tokens"],
                             rollouts["prompt_mask"], rollouts["completion_tokens"], mask,
                             spec.model)
    data["ref_logprobs"] = jax.lax.stop_gradient(ref.logprobs)
  elif spec.objective.needs_reference(spec.hparams):
    raise ValueError(f"objective {spec.objective.name!r} with these settings needs "
                     "frozen['reference'] params")
  else:
    data["ref_logprobs"] = data["old_logprobs"]

  def loss_fn(params, mb):
    policy = completion_outputs(policy_params(params, frozen, spec), mb["prompt_tokens"],
                                mb["prompt_mask"],
                                mb["completion_tokens"], mb["mask"], spec.model)
    return spec.objective.loss_fn(spec.hparams, policy, mb)

  B = rl.batch_size
  mb_size = B // rl.minibatches
  orders = jnp.stack([jax.random.permutation(jax.random.fold_in(rng, e), B)
                      for e in range(rl.epochs)])
  orders = orders.reshape(rl.epochs * rl.minibatches, mb_size)

  def update(st, idx):
    mb = jax.tree.map(lambda x: x[idx], data)
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(st["params"], mb)
    st = state_lib.apply_gradients(st, grads, spec.optimizer)
    return st, {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}

  state, update_metrics = jax.lax.scan(update, state, orders)
  state = {**state, "step": state["step"] + 1}

  lengths = mask.sum(axis=1).astype(jnp.float32)
  metrics = {k: v.mean() for k, v in update_metrics.items()}
  metrics.update({
      "reward": total.mean(),
      "response_length": lengths.mean(),
      "tokens": lengths.sum(),
      "zero_variance_groups": adv_lib.zero_variance_fraction(total, rl.group_size),
      "completed": rollouts["completion_stopped"].astype(jnp.float32).mean(),
  })
  for name, value in scores.items():
    metrics[f"reward/{name}"] = value.mean()
  if "exact_match" in scores:
    metrics["accuracy"] = scores["exact_match"].mean()
  return state, metrics


def rl_step(state, batch, rng, frozen, spec: IterationSpec):
  """The fused iteration: sample, score, advantages and updates in one program."""
  rng = jax.random.fold_in(rng, state["step"])
  sample_rng, learn_rng = jax.random.split(rng)
  rollouts = rollout(policy_params(state["params"], frozen, spec), batch, sample_rng, spec)
  return learn(state, rollouts, score(rollouts, spec), learn_rng, frozen, spec)


def _to_host(x: jax.Array) -> np.ndarray:
  """The whole array on this host, gathering the other hosts' rows when needed."""
  if x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


@dataclasses.dataclass(frozen=True)
class SamplerLayout:
  """A sampler on its own mesh and layout: the policy's weights are copied into it each step."""
  plan: ShardingPlan
  params: Any  # param shardings in the sampler's layout
  batch: Any   # prompt-batch shardings on the sampler's mesh


@dataclasses.dataclass(frozen=True)
class StepLayout:
  """Explicit shardings of a step's inputs: the train state, one batch and the frozen roles.

  Without ``sampler``, sampling reads the policy's own arrays inside the one fused program.
  """
  plan: ShardingPlan
  state: Any
  batch: Any
  frozen: Any
  sampler: Optional[SamplerLayout] = None


def jit_with_rules(fn: Callable, plan: Optional[ShardingPlan], **jit_kwargs) -> Callable:
  """``jax.jit`` that traces ``fn`` with the plan's logical-axis rules active."""
  if plan is None:
    return jax.jit(fn, **jit_kwargs)

  @functools.wraps(fn)
  def traced(*args):
    with axis_rules(plan.mesh, plan.rules):
      return fn(*args)
  return jax.jit(traced, **jit_kwargs)


def make_rl_step(spec: IterationSpec, decode: Optional[Callable[[np.ndarray], str]] = None,
                 layout: Optional[StepLayout] = None) -> Callable:
  """Returns ``step(state, batch, rng, frozen) -> (state, metrics)``.

  ``decode`` turns one row of token ids into text; it is needed only for host rewards.
  With a ``layout``, every program is jitted with explicit in/out shardings over its mesh.
  The step is one program unless a reward runs on the host or the sampler has a layout of
  its own; then sampling and learning are two programs, and the policy's weights are
  resharded into the sampler's layout before each rollout (timed as ``reshard_s``).
  """
  plan = layout.plan if layout else None
  separate = layout is not None and layout.sampler is not None
  if spec.fused and not separate:
    kw = {}
    if layout:
      kw = dict(in_shardings=(layout.state, layout.batch, plan.replicated, layout.frozen),
                out_shardings=(layout.state, plan.replicated))
    return jit_with_rules(functools.partial(rl_step, spec=spec), plan, donate_argnums=(0,), **kw)
  if not spec.fused and decode is None:
    raise ValueError("host rewards need a tokenizer to decode completions")

  sampler_plan = layout.sampler.plan if separate else plan
  sample_kw = {}
  if separate:
    sample_kw = dict(in_shardings=(layout.sampler.params, layout.sampler.batch,
                                   sampler_plan.replicated, {}))
  sample_jit = jit_with_rules(
      lambda params, batch, rng, frozen: rollout(policy_params(params, frozen, spec), batch,
                                                 rng, spec),
      sampler_plan, **sample_kw)
  score_jit = jit_with_rules(functools.partial(score, spec=spec), sampler_plan)
  learn_kw = dict(out_shardings=(layout.state, plan.replicated)) if layout else {}
  learn_jit = jit_with_rules(functools.partial(learn, spec=spec), plan, donate_argnums=(0,),
                             **learn_kw)

  def step(state, batch, rng, frozen):
    sample_rng, learn_rng = jax.random.split(jax.random.fold_in(rng, state["step"]))
    params, extra = state["params"], {}
    if separate:
      start = time.perf_counter()
      params = jax.block_until_ready(jax.device_put(params, layout.sampler.params))
      extra["reshard_s"] = time.perf_counter() - start
      batch = jax.device_put(batch, layout.sampler.batch)
      sample_rng = jax.device_put(sample_rng, sampler_plan.replicated)
    rollouts = sample_jit(params, batch, sample_rng, {} if separate else frozen)
    scores = dict(score_jit(rollouts))
    if not spec.fused:
      host = {k: _to_host(rollouts[k])
              for k in ("prompt_tokens", "completion_tokens", "answer_tokens")}
      texts = {k: [decode(row) for row in v] for k, v in host.items()}
      host_scores = reward_base.score_host(spec.rewards, texts["prompt_tokens"],
                                           texts["completion_tokens"], texts["answer_tokens"])
      if sampler_plan is not None:
        scores.update(sampler_plan.put_global_batch(host_scores))
      else:
        scores.update({k: jnp.asarray(v) for k, v in host_scores.items()})
    if separate:  # rollouts move to the learner's layout
      rollouts, scores = jax.device_put((rollouts, scores), plan.batch((rollouts, scores)))
    state, metrics = learn_jit(state, rollouts, scores, learn_rng, frozen)
    return state, {**metrics, **extra}

  return step
