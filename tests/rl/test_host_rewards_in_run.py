"""A run whose host rewards hang and raise keeps training: the failed rows get the fallback,
the failures are counted in the step's metrics, and the good rewards still score."""
import dataclasses

import jax
import numpy as np

from rlalign.rewards import host_pool
from rlalign.rewards.base import RewardTerm
from rlalign.rl import iteration
from tests.rewards import faulty_rewards  # noqa: F401  (registers the faulty rewards)
from tests.rl.test_iteration import PROBLEMS, TOKENIZER, fresh_state, make_batch
from tests.rl.test_sampling_strategies import spec_with


def test_hanging_and_raising_host_rewards_never_stop_the_run():
  spec = spec_with(group_size=2, prompts=4)
  rewards = (RewardTerm("exact_match"), RewardTerm("exact_match_text", source="text_match"),
             RewardTerm("host_pool_test_sleep_forever"), RewardTerm("host_pool_test_raises"))
  settings = host_pool.HostRewardSettings(workers=2, timeout_s=1.0, fallback=-0.25)
  spec = dataclasses.replace(spec, rl=dataclasses.replace(
      spec.rl, rewards=rewards, monitors=(RewardTerm("math_answer"),), host_rewards=settings))
  assert not spec.fused
  step = iteration.make_rl_step(spec, decode=lambda ids: TOKENIZER.decode(ids, strict=False))
  state = fresh_state(spec)
  batch = make_batch(PROBLEMS[:4])
  for i in range(2):
    state, metrics = step(state, batch, jax.random.key(i), {})
  rows = float(spec.rl.batch_size)
  assert metrics["host_reward/host_pool_test_sleep_forever/timeouts"] == rows
  assert metrics["host_reward/host_pool_test_raises/errors"] == rows
  assert metrics["host_reward/text_match/errors"] == 0
  assert float(metrics["reward/host_pool_test_sleep_forever"]) == -0.25
  assert float(metrics["reward/host_pool_test_raises"]) == -0.25
  # The host twin of exact match agrees with the in-graph one on the same rollouts.
  assert float(metrics["reward/text_match"]) == float(metrics["reward/exact_match"])
  assert "monitor/math_answer" in metrics
  assert int(state["step"]) == 2
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state["roles"]))
