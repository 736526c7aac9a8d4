"""Held-out evaluation: pass@1 of greedy and sampled decoding under the run's verifier."""
from __future__ import annotations

import dataclasses
import functools
from typing import Dict, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlalign.models import transformer as tfm
from rlalign.rewards import base as reward_base
from rlalign.sampling import sampler


@functools.partial(jax.jit, static_argnames=("model", "sampling", "reward_name", "pad_id"))
def _score_batch(params, batch, rng, *, model: tfm.ModelConfig,
                 sampling: sampler.SamplingConfig, reward_name: str, pad_id: int):
  out = sampler.sample(params, batch["prompt_tokens"], batch["prompt_mask"], rng, model, sampling,
                       pad_id)
  stop = jnp.asarray(sampling.stop_tokens or (-1,), jnp.int32)
  rollouts = {**batch, "completion_tokens": out.tokens, "completion_mask": out.mask,
              "completion_stopped": jnp.any(jnp.isin(out.tokens, stop) & out.mask, axis=1)}
  return reward_base.get(reward_name).fn(rollouts)


def pass_at_1(params, batches: Sequence[Mapping[str, np.ndarray]], rng: jax.Array,
              model: tfm.ModelConfig, sampling: sampler.SamplingConfig,
              reward_name: str = "exact_match", pad_id: int = 0) -> float:
  """Mean in-graph reward over the valid rows of ``batches`` (1 sample per prompt)."""
  total, count = 0.0, 0
  for i, batch in enumerate(batches):
    arrays = {k: v for k, v in batch.items() if k != "valid"}
    scores = _score_batch(params, arrays, jax.random.fold_in(rng, i), model=model,
                          sampling=sampling, reward_name=reward_name, pad_id=pad_id)
    valid = np.asarray(batch["valid"])
    total += float(np.sum(np.asarray(scores)[valid]))
    count += int(valid.sum())
  return total / max(count, 1)


def evaluate(params, batches, rng, model: tfm.ModelConfig, sampling: sampler.SamplingConfig,
             reward_name: str = "exact_match", pad_id: int = 0) -> Dict[str, float]:
  greedy = dataclasses.replace(sampling, temperature=0.0)
  return {
      "eval/pass@1_greedy": pass_at_1(params, batches, rng, model, greedy, reward_name, pad_id),
      "eval/pass@1_sampled": pass_at_1(params, batches, rng, model, sampling, reward_name, pad_id),
  }
