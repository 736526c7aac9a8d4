"""The epistemic-uncertainty reward: members' greedy answers compared by hand."""
import dataclasses

import jax
import numpy as np
import optax

from rlalign import objectives
from rlalign.models import transformer as tfm
from rlalign.rewards import uncertainty
from rlalign.rewards.base import RewardTerm, RoleModel
from rlalign.rl import iteration, roles as roles_lib, update
from rlalign.sampling import SamplingConfig, sampler
from tests.rl.test_roles import POLICY, make_batch

EOS = 2


def rollouts_for(params):
  objective = objectives.get("grpo")
  rl = iteration.RLConfig(batch_size=4, group_size=1, advantage="none",
                          rewards=(RewardTerm("exact_match"),))
  binding = update.Binding(objective, objective.hparams(),
                           {"policy": roles_lib.RoleSpec(POLICY, optax.adam(1e-2))}, {})
  spec = iteration.IterationSpec(SamplingConfig(max_new_tokens=4, stop_tokens=(EOS,)), rl,
                                 binding)
  return iteration.rollout(params, make_batch(), jax.random.key(0), spec)


def test_greedy_members_disagreeing_cost_log_two_and_agreeing_cost_nothing():
  a, b = tfm.init(POLICY, jax.random.key(0)), tfm.init(POLICY, jax.random.key(1))
  r = rollouts_for(a)
  settings = uncertainty.EpistemicSettings(members=("a", "b"), samples=2, temperature=0.0,
                                           stop_ids=(EOS,))
  roles = {"a": RoleModel(POLICY, a), "b": RoleModel(POLICY, b)}
  got = np.asarray(uncertainty.epistemic_uncertainty(r, roles, settings))
  # By hand: each member's greedy answer, row by row; greedy members are deterministic, so
  # the epistemic part is log 2 where their answers differ and 0 where they agree.
  config = SamplingConfig(max_new_tokens=4, temperature=0.0, stop_tokens=(EOS,))
  answers = {}
  for name, params in (("a", a), ("b", b)):
    out = sampler.sample(params, r["prompt_tokens"], r["prompt_mask"], jax.random.key(0),
                         POLICY, config)
    answers[name] = [tuple(np.asarray(t)[np.asarray(m)]) for t, m in zip(out.tokens, out.mask)]
  expected = [np.log(2.0) if x != y else 0.0 for x, y in zip(answers["a"], answers["b"])]
  np.testing.assert_allclose(got, expected, atol=1e-6)
  assert max(expected) > 0  # the two members do disagree somewhere
  same = {"a": RoleModel(POLICY, a), "b": RoleModel(POLICY, a)}
  np.testing.assert_allclose(uncertainty.epistemic_uncertainty(r, same, settings), 0.0,
                             atol=1e-6)
