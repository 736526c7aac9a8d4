"""Offline steps: training on a dataset rather than on the policy's own samples.

One step function serves every offline batch kind (see ``objectives/base.py``):

  demonstrations  prompt -> demonstration (SFT, warm starts)
  pairs           prompt -> chosen / rejected, stacked as 2B rows, chosen first (DPO and
                  its relatives, Bradley-Terry reward models)
  scored          prompt + completion with a label per row (verifiers, pointwise reward models)

Each becomes the canonical batch of ``rl/update.py``; a frozen reference, when the objective
needs one, adds ``ref_logprobs``.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp

from rlalign.rl import state as state_lib
from rlalign.rl import update
from rlalign.rl.layout import jit_with_rules

Batch = Mapping[str, jax.Array]


def to_sequences(batch: Batch, kind: str) -> dict:
  """The canonical sequences batch of one offline batch kind."""
  prompt = {"prompt_tokens": batch["prompt_tokens"], "prompt_mask": batch["prompt_mask"]}
  if kind == "demonstrations":
    return {**prompt, "completion_tokens": batch["demo_tokens"], "mask": batch["demo_mask"]}
  if kind == "pairs":
    twice = lambda x: jnp.concatenate([x, x], axis=0)
    return {"prompt_tokens": twice(batch["prompt_tokens"]),
            "prompt_mask": twice(batch["prompt_mask"]),
            "completion_tokens": jnp.concatenate([batch["chosen_tokens"],
                                                  batch["rejected_tokens"]], axis=0),
            "mask": jnp.concatenate([batch["chosen_mask"], batch["rejected_mask"]], axis=0)}
  if kind == "scored":
    out = {**prompt, "completion_tokens": batch["completion_tokens"],
           "mask": batch["completion_mask"], "labels": batch["labels"].astype(jnp.float32)}
    if "step_labels" in batch:  # [B, N]: a label at each step's last token, -1 elsewhere
      out["step_labels"] = batch["step_labels"].astype(jnp.float32)
    return out
  raise ValueError(f"batch kind {kind!r} is not an offline kind")


def stack_sequences(parts, pad_id: int) -> dict:
  """Canonical sequences batches as one, rows in order: prompts left-padded to the widest,
  completions right-padded (a recipe's rows of several kinds in one update)."""
  def widen(x, width, left, value):
    extra = width - x.shape[1]
    return jnp.pad(x, ((0, 0), (extra, 0) if left else (0, extra)), constant_values=value)
  P = max(p["prompt_tokens"].shape[1] for p in parts)
  N = max(p["completion_tokens"].shape[1] for p in parts)
  out = {}
  for key, width, left, value in (("prompt_tokens", P, True, pad_id),
                                  ("prompt_mask", P, True, False),
                                  ("completion_tokens", N, False, pad_id),
                                  ("mask", N, False, False)):
    dtype = jnp.int32 if key.endswith("tokens") else bool
    out[key] = jnp.concatenate([widen(p[key].astype(dtype), width, left, value)
                                for p in parts])
  return out


@dataclasses.dataclass(frozen=True)
class OfflineSpec:
  binding: update.Binding
  reference: Optional[str] = None  # a role giving ref_logprobs, when the objective needs one

  def check(self) -> None:
    self.binding.check()
    objective = self.binding.objective
    if objective.batch == "rollouts":
      raise ValueError(f"objective {objective.name!r} trains on rollouts: use it in an RL "
                       "phase")
    if objective.needs_reference(self.binding.hparams) and self.reference is None:
      raise ValueError(f"objective {objective.name!r} needs a reference role; roles: "
                       f"{sorted(self.binding.roles)}")


def learn(state: state_lib.TrainState, data: Batch, rng: jax.Array, frozen: Mapping[str, Any],
          spec: OfflineSpec):
  """Reference log-probs, ``prepare`` and the updates on one canonical sequences batch."""
  binding = spec.binding
  data = dict(data)
  score = update.scorer(state_lib.params_of(state), frozen, binding, data)
  if spec.reference is not None and binding.objective.needs_reference(binding.hparams):
    data["ref_logprobs"] = score(spec.reference, ("logprobs",)).logprobs
  data, prepared = update.prepare(binding, data, score)
  state, metrics = update.updates(state, data, rng, frozen, binding)
  return state, {**metrics, **prepared, "tokens": data["mask"].sum().astype(jnp.float32)}


def offline_step(state: state_lib.TrainState, batch: Batch, rng: jax.Array,
                 frozen: Mapping[str, Any], spec: OfflineSpec):
  """One phase step on a dataset batch: ``epochs x minibatches`` updates of the objective."""
  rng = jax.random.fold_in(rng, state["step"])
  state, metrics = learn(state, to_sequences(batch, spec.binding.objective.batch), rng, frozen,
                         spec)
  return {**state, "step": state["step"] + 1}, metrics


def make_offline_step(spec: OfflineSpec, layout=None) -> Callable:
  """``step(state, batch, rng, frozen) -> (state, metrics)``, jitted with the state donated."""
  spec.check()
  kw = {}
  if layout is not None:
    kw = dict(in_shardings=(layout.state, layout.batch, layout.plan.replicated, layout.frozen),
              out_shardings=(layout.state, layout.plan.replicated))
  return jit_with_rules(functools.partial(offline_step, spec=spec),
                                  layout.plan if layout else None, donate_argnums=(0,), **kw)
