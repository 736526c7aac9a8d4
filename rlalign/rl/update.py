"""The update shared by every kind of training: model outputs, ``prepare``, minibatch gradients.

Every phase, online or offline, reduces its data to one canonical batch of sequences,

  prompt_tokens, prompt_mask [B, P]   left-padded prompts
  completion_tokens, mask    [B, T]   right-padded completions (or demonstrations, or pair
                                      halves) and which of their tokens count

plus what the batch kind adds (``old_logprobs``, ``advantages``, ``labels``...). From there
:func:`updates` runs ``epochs x minibatches`` gradient steps of an objective over every role it
trains, each role with its own optimizer. Objectives name *slots*; a :class:`Binding` maps each
slot to one of the run's roles.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Mapping, Tuple

import jax
import jax.numpy as jnp
import optax

from rlalign.models import transformer as tfm
from rlalign.objectives import base as obj_base
from rlalign.rl import roles as roles_lib
from rlalign.rl import state as state_lib

Batch = Mapping[str, jax.Array]
Metrics = Dict[str, jax.Array]
SEQUENCE_KEYS = ("prompt_tokens", "prompt_mask", "completion_tokens", "mask")


def model_outputs(params, batch: Batch, cfg: tfm.ModelConfig,
                  fields: Tuple[str, ...]) -> obj_base.ModelOutputs:
  """One forward pass over prompt + completion; the requested fields, over completion tokens.

  Position t of every [B, T] field is the state before completion token t: the hidden state
  that predicts it, so ``values[:, t]`` is V(s_t) and ``logprobs[:, t]`` log pi(a_t | s_t).
  """
  P = batch["prompt_tokens"].shape[1]
  tokens = jnp.concatenate([batch["prompt_tokens"], batch["completion_tokens"]], axis=1)
  mask = jnp.concatenate([batch["prompt_mask"], batch["mask"]], axis=1)
  hidden, _ = tfm.forward(params, tokens, tfm.positions_from_mask(mask), mask, cfg)
  before = hidden[:, P - 1:-1]
  out = {}
  if {"logprobs", "entropy", "logits"} & set(fields):
    logits = tfm.lm_logits(params, before, cfg)
    if "logits" in fields:
      out["logits"] = logits
    logp_all = jax.nn.log_softmax(logits, axis=-1)
    if "logprobs" in fields:
      out["logprobs"] = jnp.take_along_axis(logp_all, batch["completion_tokens"][..., None],
                                            axis=-1)[..., 0]
    if "entropy" in fields:
      out["entropy"] = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
  if "values" in fields:
    out["values"] = tfm.scalar_output(params, before)
  if "scores" in fields:
    last = jnp.max(jnp.where(mask, jnp.arange(tokens.shape[1]), 0), axis=-1)
    out["scores"] = tfm.scalar_output(
        params, jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0])
  if "step_scores" in fields:
    out["step_scores"] = tfm.scalar_output(params, hidden[:, P:])
  if "hidden" in fields:
    out["hidden"] = before
  return obj_base.ModelOutputs(**out)


@dataclasses.dataclass(frozen=True)
class Binding:
  """An objective bound to the run's roles: everything static about one kind of update."""
  objective: obj_base.Objective
  hparams: Any
  roles: roles_lib.RoleSpecs        # every role the step sees (trained and frozen)
  slots: Mapping[str, str]          # objective slot -> role name
  epochs: int = 1
  minibatches: int = 1

  def role(self, slot: str) -> str:
    return self.slots.get(slot, slot)

  @property
  def trained_roles(self) -> Tuple[str, ...]:
    return tuple(self.role(slot) for slot in self.objective.trains)

  def check(self) -> None:
    """Every trained slot's role exists, trains, and has the heads its outputs need."""
    for slot, fields in self.objective.trains.items():
      name = self.role(slot)
      if name not in self.roles:
        raise ValueError(f"objective {self.objective.name!r} trains slot {slot!r}, bound to "
                         f"role {name!r}, which this run does not have; roles: "
                         f"{sorted(self.roles)}")
      if not self.roles[name].trained:
        raise ValueError(f"objective {self.objective.name!r} trains role {name!r}, which is "
                         "frozen (roles.{name}.trainable=False)")
      check_heads(name, self.roles[name].model, fields, f"objective {self.objective.name!r}")
    for slot in self.objective.reads:
      name = self.role(slot)
      if name not in self.roles:
        raise ValueError(f"objective {self.objective.name!r} reads slot {slot!r}, bound to role "
                         f"{name!r}, which this run does not have; roles: {sorted(self.roles)}")


def check_heads(role: str, model: tfm.ModelConfig, fields, who: str) -> None:
  needs = {"lm": {"logprobs", "entropy", "logits"},
           "scalar": {"values", "scores", "step_scores"}}
  for head, wanted in needs.items():
    if wanted & set(fields) and head not in model.heads:
      raise ValueError(f"{who} needs {sorted(wanted & set(fields))} from role {role!r}, whose "
                       f"model has no {head!r} head (roles.{role}.heads={model.heads})")
  # K scalar heads are an ensemble of reward models; a value or process head is one output.
  single = {"values", "step_scores"} & set(fields)
  if single and model.scalar_heads > 1:
    raise ValueError(f"{who} needs {sorted(single)} from role {role!r}, which has "
                     f"roles.{role}.scalar_heads={model.scalar_heads}; only sequence scores "
                     "come from several heads")


def scorer(trained: Mapping[str, Any], frozen: Mapping[str, Any], binding: Binding,
           batch: Batch) -> Callable[[str, Tuple[str, ...]], obj_base.ModelOutputs]:
  """``score(slot_or_role, fields)``: a role's outputs on ``batch`` under stop_gradient."""
  def score(name: str, fields: Tuple[str, ...]) -> obj_base.ModelOutputs:
    role = binding.role(name)
    params = roles_lib.effective_params(role, trained, frozen, binding.roles)
    check_heads(role, binding.roles[role].model, fields, "prepare")
    out = model_outputs(params, batch, binding.roles[role].model, fields)
    return jax.tree.map(jax.lax.stop_gradient, out)
  return score


def prepare(binding: Binding, batch: Batch, score, group_size: int = 1
            ) -> Tuple[Dict[str, jax.Array], Metrics]:
  """The objective's ``prepare``, if any: the batch it returns, and the whole-batch metrics it
  may return beside it (``return batch, metrics``), logged with the update's."""
  objective = binding.objective
  if objective.prepare is None:
    return dict(batch), {}
  out = objective.prepare(binding.hparams, batch, score, group_size)
  if isinstance(out, tuple):
    out, metrics = out
    return dict(out), dict(metrics)
  return dict(out), {}


def loss(trained: Mapping[str, Any], frozen: Mapping[str, Any], batch: Batch,
         binding: Binding):
  """The objective on one minibatch, as a function of the trained roles' params; returns
  ``(loss, (metrics, outputs))``."""
  outputs = {}
  for slot, fields in binding.objective.trains.items():
    role = binding.role(slot)
    params = roles_lib.effective_params(role, trained, frozen, binding.roles)
    outputs[slot] = model_outputs(params, batch, binding.roles[role].model, fields)
  value, metrics = binding.objective.loss_fn(binding.hparams, outputs, batch)
  return value, (metrics, outputs)


def minibatch_orders(rows: int, rng: jax.Array, epochs: int, minibatches: int,
                     pairs: bool = False) -> jax.Array:
  """[epochs * minibatches, rows // minibatches] row indices: each epoch a fresh shuffle.

  A pairs batch (2B rows, chosen then rejected) is shuffled by pair, and each minibatch keeps
  the layout: its chosen rows first, then the same pairs' rejected rows.
  """
  units = rows // 2 if pairs else rows
  orders = jnp.stack([jax.random.permutation(jax.random.fold_in(rng, e), units)
                      for e in range(epochs)]).reshape(epochs * minibatches, -1)
  return jnp.concatenate([orders, orders + units], axis=1) if pairs else orders


def updates(state: state_lib.TrainState, data: Batch, rng: jax.Array,
            frozen: Mapping[str, Any], binding: Binding) -> Tuple[state_lib.TrainState, Metrics]:
  """``epochs x minibatches`` gradient steps over shuffled rows of ``data``, in one scan
(pairs stay pairs: :func:`minibatch_orders`).

  Metrics are each update's, averaged (the sampler gap is the first update's; skipped
  updates are counted). An update whose loss, gradients or new params are not all finite is
  skipped. The state's step is not advanced here: a phase step counts once however many
  updates it makes.
  """
  orders = minibatch_orders(data["mask"].shape[0], rng, binding.epochs, binding.minibatches,
                            pairs=binding.objective.shuffles_pairs)
  optimizers = {name: binding.roles[name].optimizer for name in binding.trained_roles}

  def one(st, idx):
    mb = jax.tree.map(lambda x: x[idx], data)
    trained = {name: st["roles"][name]["params"] for name in binding.trained_roles}
    (value, (metrics, outputs)), grads = jax.value_and_grad(loss, has_aux=True)(
        trained, frozen, mb, binding)
    updated = state_lib.apply_gradients(st, grads, optimizers)
    # A non-finite loss, gradient or new param skips the update: the state stays as it was,
    # and the loop counts the skip (and aborts the run after too many in a row).
    finite = all_finite((value, grads, state_lib.params_of(updated)))
    st = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, st)
    metrics = {**metrics, "loss": value, "skipped_updates": 1 - finite.astype(jnp.int32)}
    if len(grads) == 1:
      metrics["grad_norm"] = optax.tree.norm(grads)
    else:
      metrics.update({f"{name}/grad_norm": optax.tree.norm(g) for name, g in grads.items()})
    policy = outputs.get("policy")
    if policy is not None and policy.logprobs is not None:
      for key, name in (("sampler_logprobs", "sampler_gap"), ("old_logprobs", "old_gap")):
        if key in mb:
          metrics.update(logprob_gap(policy.logprobs, mb[key], mb["mask"], name))
    return st, metrics

  state, metrics = jax.lax.scan(one, state, orders)
  # Gaps compare with the learner's params as they sampled: the first update's.
  return state, {k: v[0] if k in FIRST_UPDATE_METRICS else v.sum() if k in SUMMED_METRICS
                 else v.mean() for k, v in metrics.items()}


FIRST_UPDATE_METRICS = ("sampler_gap_max", "sampler_gap_mean", "old_gap_max", "old_gap_mean")
SUMMED_METRICS = ("skipped_updates",)


def finite_leaves(tree) -> list:
  """Per leaf of ``tree``, whether it is all finite (True for integer leaves)."""
  return [jnp.all(jnp.isfinite(x)) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)
          else jnp.array(True) for x in jax.tree.leaves(tree)]


def all_finite(tree) -> jax.Array:
  """Whether every float in ``tree`` is finite, as a bool scalar."""
  leaves = finite_leaves(tree)
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def logprob_gap(learner: jax.Array, other: jax.Array, mask: jax.Array, name: str) -> Metrics:
  """|log pi_learner(y) - log pi_other(y)| per sequence, its max and mean over the batch.

  ``sampler_gap``: against the sampler's log-probs, the train/rollout mismatch (bfloat16
  sampling and learning round differently). ``old_gap``: against the pi_old the loss uses; 0
  when ``rl.rescore_old_logprobs`` recomputes it with the learner.
  """
  gap = jnp.abs(obj_base.sequence_sum(jax.lax.stop_gradient(learner) - other, mask))
  return {f"{name}_max": jnp.max(gap), f"{name}_mean": jnp.mean(gap)}
