"""Process rewards: steps at a delimiter, a PRM's per-step scores, their per-token advantages,
PRM training and Math-Shepherd's Monte-Carlo labels, each against a hand or row-by-row
computation."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlalign import objectives
from rlalign.models import transformer as tfm
from rlalign.objectives import advantages as adv_lib
from rlalign.objectives import base as obj_base
from rlalign.objectives import prm
from rlalign.rewards import base, process
from rlalign.rewards.base import RewardTerm
from rlalign.rl import iteration, roles as roles_lib, update
from rlalign.sampling import SamplingConfig, sampler
from tests.rl.test_roles import POLICY, TOKENIZER, make_batch

DELIM, EOS = 13, 2  # '+' in the addition alphabet ends a step
PRM_MODEL = dataclasses.replace(POLICY, heads=("scalar",))


def test_step_ends_by_hand():
  tokens = np.array([[5, DELIM, 6, DELIM, 7, EOS], [DELIM, 5, 0, 0, 0, 0], [0] * 6])
  mask = np.array([[1] * 6, [1, 1, 0, 0, 0, 0], [0] * 6], bool)
  np.testing.assert_array_equal(process.step_ends(tokens, mask, DELIM),
                                [[0, 1, 0, 1, 0, 1], [1, 1, 0, 0, 0, 0], [0] * 6])


def test_aggregate_steps_by_hand():
  values = np.array([[0.9, 0.0, 0.2, 0.7], [0.5, 0.0, 0.0, 0.0], [0.0] * 4])
  steps = np.array([[1, 0, 1, 1], [1, 0, 0, 0], [0] * 4], bool)
  np.testing.assert_allclose(process.aggregate_steps(values, steps, "min"), [0.2, 0.5, 0.0])
  np.testing.assert_allclose(process.aggregate_steps(values, steps, "mean"), [0.6, 0.5, 0.0])
  np.testing.assert_allclose(process.aggregate_steps(values, steps, "last"), [0.7, 0.5, 0.0])


def test_process_advantages_by_hand():
  # One group of two completions: steps end at (0, 1), (0, 3), (1, 2) with rewards 1, 0, 0.5.
  r = np.zeros((2, 4), np.float32)
  steps = np.zeros((2, 4), bool)
  for (b, t), v in {(0, 1): 1.0, (0, 3): 0.0, (1, 2): 0.5}.items():
    r[b, t], steps[b, t] = v, True
  mask = np.array([[1, 1, 1, 1], [1, 1, 1, 0]], bool)
  out = np.asarray(adv_lib.process_advantages(r, steps, mask, group_size=2, eps=0.0))
  mean, std = 0.5, np.sqrt((0.25 + 0.25 + 0.0) / 3)
  z = {k: (v - mean) / std for k, v in {"a": 1.0, "b": 0.0, "c": 0.5}.items()}
  expected = [[z["a"] + z["b"], z["a"] + z["b"], z["b"], z["b"]],
              [z["c"], z["c"], z["c"], 0.0]]
  np.testing.assert_allclose(out, expected, atol=1e-6)


def _rollouts(seed=0):
  spec = make_spec()
  policy = tfm.init(POLICY, jax.random.key(seed))
  return jax.jit(lambda p, b, r: iteration.rollout(p, b, r, spec))(
      policy, make_batch(), jax.random.key(seed + 1))


def make_spec(objective="grpo", group_size=4, aggregate="min"):
  obj = objectives.get(objective)
  settings = process.ProcessRewardSettings(role="prm", delimiter_id=DELIM,
                                           sequence_aggregate=aggregate)
  rl = iteration.RLConfig(batch_size=4 * group_size, group_size=group_size,
                          rewards=(RewardTerm("exact_match"),
                                   RewardTerm("process_reward_model", 0.5, settings)))
  roles = {"policy": roles_lib.RoleSpec(POLICY, optax.adam(1e-2)),
           "prm": roles_lib.RoleSpec(PRM_MODEL)}
  binding = update.Binding(obj, obj.hparams(), roles, {})
  return iteration.IterationSpec(SamplingConfig(max_new_tokens=4, stop_tokens=(EOS,)), rl,
                                 binding)


def test_prm_scores_each_step_as_a_forward_pass_of_its_prefix():
  r = _rollouts()
  r = {**r, "completion_tokens": r["completion_tokens"].at[:, 1].set(DELIM)}  # two steps each
  prm_params = tfm.init(PRM_MODEL, jax.random.key(7))
  settings = process.ProcessRewardSettings(role="prm", delimiter_id=DELIM)
  values, steps = process.process_reward_model(
      r, {"prm": base.RoleModel(PRM_MODEL, prm_params)}, settings)
  # Separately: each step's prefix alone, left-padded to one width (one compile), scored at
  # its last token.
  width = r["prompt_tokens"].shape[1] + r["completion_tokens"].shape[1]
  last_score = jax.jit(lambda t, m: tfm.sequence_scores(prm_params, t, m, PRM_MODEL))
  for row in range(r["prompt_tokens"].shape[0]):
    prompt = np.asarray(r["prompt_tokens"][row])[np.asarray(r["prompt_mask"][row])]
    completion = np.asarray(r["completion_tokens"][row])[np.asarray(r["completion_mask"][row])]
    for t in np.flatnonzero(np.asarray(steps[row])):
      real = np.concatenate([prompt, completion[:t + 1]])
      tokens = np.zeros((1, width), np.int32)
      tokens[0, width - len(real):] = real
      mask = np.arange(width)[None] >= width - len(real)  # a sampled token may be id 0
      expected = jax.nn.sigmoid(last_score(tokens, mask)[0])
      np.testing.assert_allclose(values[row, t], expected, rtol=1e-5, atol=1e-6)
  assert np.asarray(steps)[:, 1].all()
  assert float(jnp.sum(jnp.where(steps, 0.0, values) ** 2)) == 0.0


def test_prm_loss_is_bce_at_labelled_steps_by_hand():
  scores = np.array([[0.5, -1.0, 2.0], [0.0, 3.0, -2.0]], np.float32)
  labels = np.array([[1.0, -1.0, 0.0], [-1.0, 0.25, -1.0]], np.float32)
  mask = np.array([[1, 1, 1], [1, 1, 0]], bool)
  outputs = {"model": obj_base.ModelOutputs(step_scores=jnp.asarray(scores))}
  loss, metrics = prm.prm_loss(prm.PRMConfig(), outputs, {"step_labels": labels, "mask": mask})
  sig = lambda x: 1 / (1 + np.exp(-x))
  terms = [-np.log(sig(0.5)), -np.log(1 - sig(2.0)),
           -(0.25 * np.log(sig(3.0)) + 0.75 * np.log(1 - sig(3.0)))]
  assert float(loss) == pytest.approx(np.mean(terms), rel=1e-5)
  # Verdicts: 0.5 > 0 for label 1 right; 2.0 > 0 for label 0 wrong; 3.0 > 0 for 0.25 wrong.
  assert float(metrics["step_accuracy"]) == pytest.approx(1 / 3)


def test_monte_carlo_labels_match_a_row_by_row_greedy_rollout():
  policy = tfm.init(POLICY, jax.random.key(3))
  r = dict(_rollouts(3))
  r["completion_tokens"] = r["completion_tokens"].at[:, 1].set(DELIM)
  r = {k: np.asarray(v) for k, v in r.items()}
  greedy = SamplingConfig(max_new_tokens=4, temperature=0.0, stop_tokens=(EOS,))
  rows = range(r["prompt_tokens"].shape[0])

  width = r["prompt_tokens"].shape[1] + r["completion_tokens"].shape[1]
  sample = jax.jit(lambda t, m: sampler.sample(policy, t, m, jax.random.key(0), POLICY, greedy))

  def continue_greedily(row, t):  # one prefix at a time, left-padded to one width
    prompt = r["prompt_tokens"][row][r["prompt_mask"][row]]
    completion = r["completion_tokens"][row][r["completion_mask"][row]]
    prefix = np.concatenate([prompt, completion[:t + 1]])
    tokens = np.zeros((1, width), np.int32)
    tokens[0, width - len(prefix):] = prefix
    mask = np.zeros((1, width), bool)
    mask[0, width - len(prefix):] = True
    out = sample(tokens, mask)
    return list(completion[:t + 1]) + list(np.asarray(out.tokens[0])[np.asarray(out.mask[0])])

  # Make row 0's answer exactly what greedy continuation of its first step writes, so some
  # labels are 1.
  answer = continue_greedily(0, 1)
  assert len(answer) <= r["answer_tokens"].shape[1] + 4
  r["answer_tokens"] = np.concatenate([r["answer_tokens"], np.zeros((len(rows), 4), np.int32)], 1)
  r["answer_mask"] = np.concatenate([r["answer_mask"], np.zeros((len(rows), 4), bool)], 1)
  r["answer_tokens"][0], r["answer_mask"][0] = 0, False
  r["answer_tokens"][0, :len(answer)], r["answer_mask"][0, :len(answer)] = answer, True
  labels = np.asarray(process.monte_carlo_step_labels(
      policy, POLICY, r, jax.random.key(1), delimiter=DELIM, samples=2, sampling=greedy))
  steps = np.asarray(process.step_ends(r["completion_tokens"], r["completion_mask"], DELIM))
  for row in rows:
    length = int(r["completion_mask"][row].sum())
    ref = list(r["answer_tokens"][row][r["answer_mask"][row]])
    for t in range(r["completion_tokens"].shape[1]):
      if not steps[row, t]:
        assert labels[row, t] == -1
        continue
      if t == length - 1:  # the last step: the completion itself
        written = list(r["completion_tokens"][row][:length])
      else:
        written = continue_greedily(row, t)
      assert labels[row, t] == float(written == ref), (row, t)
  assert labels[0, 1] == 1.0


def test_step_rewards_train_through_per_token_advantages_in_the_fused_step():
  spec = make_spec()
  step = iteration.make_rl_step(spec)
  policy = tfm.init(POLICY, jax.random.key(0))
  state = {"step": jnp.zeros((), jnp.int32),
           "roles": {"policy": {"params": policy, "opt_state": optax.adam(1e-2).init(policy)}}}
  frozen = {"prm": tfm.init(PRM_MODEL, jax.random.key(1))}
  before = np.asarray(policy["embed"])  # the step donates the state
  state, metrics = step(state, make_batch(), jax.random.key(0), frozen)
  assert np.isfinite(float(metrics["reward/process_reward_model"]))
  assert not np.allclose(before, state["roles"]["policy"]["params"]["embed"])
  with pytest.raises(ValueError, match="per-token advantages"):
    make_spec(objective="gspo").check()
