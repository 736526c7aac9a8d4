"""Held-out evaluation: pass@1 of greedy and sampled decoding under the run's verifier."""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Dict, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlalign.models import transformer as tfm
from rlalign.parallel.sharding import ShardingPlan
from rlalign.rewards import base as reward_base
from rlalign.rl.iteration import jit_with_rules
from rlalign.sampling import sampler


def _score_batch(params, batch, rng, *, model: tfm.ModelConfig,
                 sampling: sampler.SamplingConfig, reward_name: str, pad_id: int):
  out = sampler.sample(params, batch["prompt_tokens"], batch["prompt_mask"], rng, model, sampling,
                       pad_id)
  stop = jnp.asarray(sampling.stop_tokens or (-1,), jnp.int32)
  rollouts = {**batch, "completion_tokens": out.tokens, "completion_mask": out.mask,
              "completion_stopped": jnp.any(jnp.isin(out.tokens, stop) & out.mask, axis=1)}
  return reward_base.get(reward_name).fn(rollouts)


def make_evaluator(model: tfm.ModelConfig, sampling: sampler.SamplingConfig,
                   reward_name: str = "exact_match", pad_id: int = 0,
                   plan: Optional[ShardingPlan] = None) -> Callable:
  """Returns ``evaluate(params, batches, rng) -> {"eval/pass@1_greedy", "eval/pass@1_sampled"}``.

  ``batches`` are numpy dicts with a ``valid`` row mask (see data.pipeline.eval_batches),
  held in full by every process; with a plan they are split over the mesh's batch axes.
  """
  def scorer(settings):
    fn = functools.partial(_score_batch, model=model, sampling=settings,
                           reward_name=reward_name, pad_id=pad_id)
    kw = dict(out_shardings=plan.replicated) if plan is not None else {}
    return jit_with_rules(fn, plan, **kw)

  greedy = scorer(dataclasses.replace(sampling, temperature=0.0))
  sampled = scorer(sampling)

  def pass_at_1(score, params, batches, rng) -> float:
    total, count = 0.0, 0
    for i, batch in enumerate(batches):
      arrays = {k: v for k, v in batch.items() if k != "valid"}
      if plan is not None:
        arrays = plan.put_global_batch(arrays)
      scores = np.asarray(jax.device_get(score(params, arrays, jax.random.fold_in(rng, i))))
      valid = np.asarray(batch["valid"])
      total += float(np.sum(scores[valid]))
      count += int(valid.sum())
    return total / max(count, 1)

  def evaluate(params, batches: Sequence[Mapping[str, np.ndarray]], rng) -> Dict[str, float]:
    return {"eval/pass@1_greedy": pass_at_1(greedy, params, batches, rng),
            "eval/pass@1_sampled": pass_at_1(sampled, params, batches, rng)}

  return evaluate
