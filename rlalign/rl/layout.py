"""Explicit layouts of a step's inputs, and jit under the plan's logical-axis rules."""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional

import jax

from rlalign.parallel.logical import axis_rules
from rlalign.parallel.sharding import ShardingPlan


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




def jit_step(fn: Callable, layout: StepLayout) -> Callable:
  """A recipe's ``step(state, batch, rng, frozen) -> (state, metrics)`` jitted on ``layout``:
  the state donated and kept in its layout, the metrics replicated."""
  return jit_with_rules(fn, layout.plan, donate_argnums=(0,),
                        in_shardings=(layout.state, layout.batch, layout.plan.replicated,
                                      layout.frozen),
                        out_shardings=(layout.state, layout.plan.replicated))
