"""Supervised steps on demonstrations: the warm start before RL, and any SFT stage."""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Optional

import jax
import optax

from rlalign.models import transformer as tfm
from rlalign.objectives import base as obj_base
from rlalign.rl import iteration
from rlalign.rl import state as state_lib


def supervised_step(state: state_lib.TrainState, batch: Mapping[str, jax.Array], rng: jax.Array,
                    frozen: Mapping[str, Any], *, model: tfm.ModelConfig, objective: obj_base.Objective, hparams: Any,
                    optimizer: optax.GradientTransformation):
  """One gradient step of ``objective`` on ``prompt -> demonstration`` pairs."""
  del rng, frozen  # deterministic and self-contained; kept for the common step signature

  def loss_fn(params):
    policy = iteration.completion_outputs(params, batch["prompt_tokens"], batch["prompt_mask"],
                                          batch["demo_tokens"], batch["demo_mask"], model)
    return objective.loss_fn(hparams, policy, {"mask": batch["demo_mask"]})

  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
  state = state_lib.apply_gradients(state, grads, optimizer)
  state = {**state, "step": state["step"] + 1}
  return state, {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads),
                 "tokens": batch["demo_mask"].sum().astype(jax.numpy.float32)}


def make_supervised_step(model: tfm.ModelConfig, optimizer: optax.GradientTransformation,
                         objective_name: str = "sft", hparams: Any = None,
                         layout: Optional[iteration.StepLayout] = None) -> Callable:
  objective = obj_base.get(objective_name)
  hparams = objective.hparams() if hparams is None else hparams
  fn = functools.partial(supervised_step, model=model, objective=objective, hparams=hparams,
                         optimizer=optimizer)
  kw = {}
  if layout is not None:
    kw = dict(in_shardings=(layout.state, layout.batch, layout.plan.replicated, layout.frozen),
              out_shardings=(layout.state, layout.plan.replicated))
  return iteration.jit_with_rules(fn, layout.plan if layout else None, donate_argnums=(0,), **kw)
