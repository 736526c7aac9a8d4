"""What the iteration samples beyond G completions per prompt: DAPO's in-graph dynamic sampling
and ReMax's greedy baseline, each checked against a hand computation on the same rollouts."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlalign import objectives
from rlalign.objectives import advantages as adv_lib
from rlalign.profiling import count_compilations
from rlalign.rewards import base as reward_base
from rlalign.rewards import verifiers
from rlalign.rewards.base import RewardTerm
from rlalign.rl import iteration
from rlalign.rl import state as state_lib

from rlalign.models import transformer as tfm
from rlalign.sampling import SamplingConfig, sampler
from tests.rl.test_iteration import MODEL, PROBLEMS, TOKENIZER, fresh_state, make_batch


def spec_with(group_size=4, prompts=2, advantage="group_norm", dynamic=False, oversample=2,
              objective="grpo"):
  obj = objectives.get(objective)
  rl = iteration.RLConfig(batch_size=prompts * group_size, group_size=group_size,
                          advantage=advantage, rewards=(RewardTerm("exact_match"),),
                          dynamic_sampling=dynamic, oversample=oversample)
  return iteration.single_policy_spec(
      MODEL, SamplingConfig(max_new_tokens=4, stop_tokens=(TOKENIZER.eos_id,)), rl, obj,
      obj.hparams(), state_lib.make_optimizer(state_lib.OptimizerConfig(learning_rate=1e-2)),
      reference=False)


def fake_rollouts(rewards, width=3):
  """Rollouts whose row i is recognisable (every token i) with the given rewards."""
  n = len(rewards)
  rows = jnp.arange(n, dtype=jnp.int32)[:, None]
  return ({"completion_tokens": jnp.broadcast_to(rows, (n, width)),
           "completion_mask": jnp.ones((n, width), bool),
           "prompt_tokens": jnp.broadcast_to(rows, (n, 2))},
          {"exact_match": jnp.asarray(rewards, jnp.float32)})


def test_select_informative_groups_keeps_varied_groups_in_order():
  # 4 sampled groups of G=2, 2 kept: groups 1 and 3 are the informative ones.
  spec = spec_with(group_size=2, prompts=2, dynamic=True, oversample=2)
  rollouts, scores = fake_rollouts([1, 1, 0, 1, 0, 0, 1, 0])
  kept, kept_scores, metrics = iteration.select_informative_groups(rollouts, scores, spec)
  np.testing.assert_array_equal(kept["completion_tokens"][:, 0], [2, 3, 6, 7])
  np.testing.assert_array_equal(kept_scores["exact_match"], [0, 1, 1, 0])
  assert kept["informative"].all()
  assert float(metrics["dynamic_sampling/informative_groups"]) == 2
  assert float(metrics["dynamic_sampling/unfilled"]) == 0
  assert float(metrics["dynamic_sampling/kept_informative_fraction"]) == 1
  assert float(metrics["dynamic_sampling/sampled_reward"]) == pytest.approx(4 / 8)


def test_select_informative_groups_fills_and_counts_a_short_batch():
  # Only group 2 differs: it comes first, then the earliest uninformative group.
  spec = spec_with(group_size=2, prompts=2, dynamic=True, oversample=2)
  rollouts, scores = fake_rollouts([1, 1, 0, 0, 0, 1, 1, 1])
  kept, _, metrics = iteration.select_informative_groups(rollouts, scores, spec)
  np.testing.assert_array_equal(kept["completion_tokens"][:, 0], [4, 5, 0, 1])
  np.testing.assert_array_equal(kept["informative"], [True, True, False, False])
  assert float(metrics["dynamic_sampling/unfilled"]) == 1
  assert float(metrics["dynamic_sampling/kept_informative_fraction"]) == 0.5


def test_informativeness_reads_only_the_named_rewards():
  """DAPO keeps groups by accuracy: a group all wrong but of differing lengths is filler."""
  spec = spec_with(group_size=2, prompts=1, dynamic=True, oversample=2)
  spec = dataclasses.replace(spec, rl=dataclasses.replace(
      spec.rl, rewards=(RewardTerm("exact_match"), RewardTerm("overlong")),
      informative_rewards=("exact_match",)))
  rollouts, scores = fake_rollouts([0, 0, 1, 0])
  scores["overlong"] = jnp.asarray([0.0, -0.5, 0.0, 0.0])  # group 0 differs in length only
  kept, _, metrics = iteration.select_informative_groups(rollouts, scores, spec)
  np.testing.assert_array_equal(kept["completion_tokens"][:, 0], [2, 3])
  assert float(metrics["dynamic_sampling/informative_groups"]) == 1
  every_term = dataclasses.replace(spec, rl=dataclasses.replace(spec.rl, informative_rewards=()))
  _, _, metrics = iteration.select_informative_groups(rollouts, scores, every_term)
  assert float(metrics["dynamic_sampling/informative_groups"]) == 2


def test_filler_groups_carry_no_loss():
  """With every group uninformative the update has no token to learn from: params stay."""
  spec = spec_with(group_size=2, prompts=2, dynamic=True, oversample=2)
  state = fresh_state(spec)
  before = jax.tree.map(np.asarray, state["roles"]["policy"]["params"])
  rollouts, scores = fake_rollouts([1, 1, 0, 0, 1, 1, 0, 0], width=4)
  rollouts.update(prompt_mask=jnp.ones((8, 2), bool), logprobs=jnp.full((8, 4), -1.0),
                  completion_stopped=jnp.ones(8, bool),
                  completion_tokens=rollouts["completion_tokens"] % 16)
  state, metrics = jax.jit(lambda s: iteration.learn(s, rollouts, scores, jax.random.key(0), {},
                                                     spec))(state)
  assert float(metrics["dynamic_sampling/unfilled"]) == 1
  jax.tree.map(np.testing.assert_array_equal, before, state["roles"]["policy"]["params"])


def test_dynamic_sampling_step_reads_oversampled_prompts_and_compiles_once():
  spec = spec_with(group_size=4, prompts=2, dynamic=True, oversample=2)
  assert spec.rl.sampled_prompts_per_step == 4 and spec.rl.prompts_per_step == 2
  step = iteration.make_rl_step(spec)
  state = fresh_state(spec)
  rng = jax.random.key(0)
  with count_compilations() as compiles:
    for start in (0, 4, 2):
      state, metrics = step(state, make_batch(PROBLEMS[start:start + 4]), rng, {})
    jax.block_until_ready(state)
  assert compiles.count == 1
  for key in ("informative_groups", "unfilled", "kept_informative_fraction"):
    assert f"dynamic_sampling/{key}" in metrics
  # Throughput counts every sampled token, kept or not.
  assert metrics["tokens"] == metrics["dynamic_sampling/sampled_tokens"]


def test_dynamic_sampling_validation():
  with pytest.raises(ValueError, match="oversample"):
    dataclasses.replace(spec_with(dynamic=True).rl, oversample=0).validate()
  with pytest.raises(ValueError, match="group-relative advantage"):
    iteration.RLConfig(batch_size=8, group_size=2, advantage="batch_norm",
                       dynamic_sampling=True).validate()
  with pytest.raises(ValueError, match="informative_rewards"):
    iteration.RLConfig(batch_size=8, group_size=2, dynamic_sampling=True,
                       informative_rewards=("nope",)).validate()
  with pytest.raises(ValueError, match="group_size must be >= 2"):
    iteration.RLConfig(batch_size=4, group_size=1, advantage="group_norm",
                       dynamic_sampling=True).validate()
  iteration.RLConfig(batch_size=4, group_size=1, advantage="none").validate()


def test_estimators_by_hand():
  r = jnp.asarray([1.0, 0.0, 0.0, 0.0, 1.0, 1.0])
  np.testing.assert_allclose(adv_lib.raw(r, 3), r)
  expected = (np.asarray(r) - 0.5) / (0.5 + 1e-6)
  np.testing.assert_allclose(adv_lib.batch_normalized(r, 3), expected, rtol=1e-5)
  # ReMax: each prompt's rewards minus its greedy completion's reward.
  np.testing.assert_allclose(adv_lib.greedy_baseline(r, 3, jnp.asarray([1.0, 0.0])),
                             [0, -1, -1, 0, 1, 1])
  assert adv_lib.get("greedy_baseline").greedy_baseline
  assert adv_lib.get("group_norm").min_group_size == 2


def test_remax_baseline_is_the_greedy_completions_reward():
  """The step's baseline is exact_match of the policy's greedy completions, computed here
  independently with the sampler at temperature 0."""
  spec = spec_with(group_size=2, prompts=4, advantage="greedy_baseline")
  # A length-dependent reward, non-zero on an untrained model's completions.
  spec = dataclasses.replace(spec, rl=dataclasses.replace(spec.rl, rewards=(
      RewardTerm("overlong", settings=verifiers.OverlongSettings(buffer=4)),)))
  params = tfm.init(MODEL, jax.random.key(0))
  state = fresh_state(spec, params=tfm.init(MODEL, jax.random.key(0)))  # donated by the step
  batch = make_batch(PROBLEMS[:4])
  rng = jax.random.key(2)
  _, metrics = iteration.make_rl_step(spec)(state, batch, rng, {})
  # The policy's greedy completions, straight from the sampler at temperature 0.
  out = sampler.sample(params, jnp.asarray(batch["prompt_tokens"]),
                       jnp.asarray(batch["prompt_mask"]), jax.random.key(9), MODEL,
                       dataclasses.replace(spec.sampling, temperature=0.0), 0)
  expected = verifiers.overlong({"completion_mask": out.mask}, None,
                                spec.rewards[0].settings).mean()
  assert float(expected) != 0
  assert float(metrics["baseline_reward"]) == pytest.approx(float(expected))


def test_greedy_baseline_needs_the_fused_step():
  spec = spec_with(group_size=2, prompts=4, advantage="greedy_baseline")
  spec = dataclasses.replace(spec, rl=dataclasses.replace(
      spec.rl, rewards=(RewardTerm("exact_match_text"),)))
  with pytest.raises(ValueError, match="greedy baseline"):
    iteration.make_rl_step(spec, decode=lambda ids: "")
