"""Online DPO: prepare's pairs by hand (best and worst of each group, ties, weights), the loss
against offline DPO's on the informative pairs, and prepare + updates of a tiny model with two
minibatches, which must keep every pair's halves together."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlalign import objectives
from rlalign.models import transformer as tfm
from rlalign.objectives import base, dpo, online_dpo
from rlalign.rl import roles as roles_lib
from rlalign.rl import state as state_lib
from rlalign.rl import update


def _close(x, expected, tol=1e-6):
  chex.assert_trees_all_close(x, np.asarray(expected, np.float32), rtol=tol, atol=tol)


def _no_score(slot, fields):
  raise AssertionError(f"online_dpo's prepare scored {slot!r}")


# ---------------------------------------------------------------- prepare by hand

G = 3
# Group 0 (rows 0-2): the best reward 1.0 twice (rows 1 and 2: the first, row 1, is chosen),
# the worst -0.5 at row 0. Group 1 (rows 3-5): all tied, no preference.
REWARDS = [-0.5, 1.0, 1.0, 0.3, 0.3, 0.3]
PAIR_ROWS = [1, 3, 0, 3]  # chosen of groups 0, 1, then their rejected


def _hand_batch(per_token_advantages=False, B=6, P=2, T=3):
  row = np.arange(B)
  # Every key's rows are recognisable: row r holds values derived from r.
  advantages = row.astype(np.float32) * 10
  if per_token_advantages:
    advantages = advantages[:, None] + np.arange(T, dtype=np.float32)
  return {
      "prompt_tokens": jnp.asarray(np.repeat(row // G, P).reshape(B, P) + 1, jnp.int32),
      "prompt_mask": jnp.asarray(np.ones((B, P), bool)),
      "completion_tokens": jnp.asarray(row[:, None] * 10 + np.arange(T), jnp.int32),
      "mask": jnp.asarray(np.arange(T)[None, :] < (row % T + 1)[:, None]),
      "sampler_logprobs": jnp.asarray(-row[:, None] - 0.1 * np.arange(T), jnp.float32),
      "old_logprobs": jnp.asarray(-row[:, None] - 0.2 * np.arange(T), jnp.float32),
      "ref_logprobs": jnp.asarray(-row[:, None] - 0.3 * np.arange(T), jnp.float32),
      "rewards": jnp.asarray(REWARDS[:B], jnp.float32),
      "advantages": jnp.asarray(advantages),
  }


@pytest.mark.parametrize("per_token_advantages", [False, True])
def test_prepare_pairs_best_and_worst_of_each_group(per_token_advantages):
  batch = _hand_batch(per_token_advantages)
  out, metrics = online_dpo.online_dpo_prepare(online_dpo.OnlineDPOConfig(), batch, _no_score,
                                               G)
  assert set(out) == set(batch) | {"pair_weight"}
  for key, value in batch.items():  # every row-aligned key, gathered the same way
    chex.assert_trees_all_equal(out[key], np.asarray(value)[PAIR_ROWS])
  for value in out.values():
    assert value.shape[0] == 2 * len(REWARDS) // G
  _close(out["pair_weight"], [1.0, 0.0, 1.0, 0.0])
  _close(out["rewards"], [1.0, 0.3, -0.5, 0.3])
  _close(metrics["informative_pairs"], 0.5)
  _close(metrics["chosen_reward_gap"], (1.5 + 0.0) / 2)
  # Pairs share their prompt: a chosen row and its rejected row come from the same group.
  chosen, rejected = base.split_pairs(out["prompt_tokens"])
  chex.assert_trees_all_equal(chosen, rejected)


def test_ties_for_the_worst_also_take_the_first_row():
  # Groups of 3: the worst tied (rows 1, 2), the best tied (rows 3, 4), all tied (rows 6-8).
  rewards = jnp.asarray([2.0, 0.0, 0.0, 5.0, 5.0, -1.0, 7.0, 7.0, 7.0], jnp.float32)
  chosen, rejected, informative = online_dpo.best_and_worst(rewards, 3)
  np.testing.assert_array_equal(chosen, [0, 3, 6])
  np.testing.assert_array_equal(rejected, [1, 5, 6])
  np.testing.assert_array_equal(informative, [True, True, False])


def test_prepare_rejects_keys_that_are_not_row_aligned_and_partial_groups():
  batch = dict(_hand_batch())
  with pytest.raises(ValueError, match="group_size"):
    online_dpo.online_dpo_prepare(online_dpo.OnlineDPOConfig(), batch, _no_score, 4)
  with pytest.raises(ValueError, match="group_size"):
    online_dpo.online_dpo_prepare(online_dpo.OnlineDPOConfig(), batch, _no_score, 1)
  batch["step"] = jnp.zeros(())
  with pytest.raises(ValueError, match="'step'"):
    online_dpo.online_dpo_prepare(online_dpo.OnlineDPOConfig(), batch, _no_score, G)


# ---------------------------------------------------------------- the loss


def _random_pairs_batch(seed, n_pairs, T=4):
  rng = np.random.default_rng(seed)
  logp = rng.normal(size=(2 * n_pairs, T)) - 1.0
  ref = rng.normal(size=(2 * n_pairs, T)) - 1.0
  mask = np.arange(T)[None, :] < rng.integers(1, T + 1, (2 * n_pairs, 1))
  return logp.astype(np.float32), ref.astype(np.float32), mask


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_loss_is_dpo_on_the_informative_pairs(label_smoothing):
  # Three pairs; pair 1 has no preference and must count for nothing.
  logp, ref, mask = _random_pairs_batch(0, 3)
  weight = np.array([1.0, 0.0, 1.0])
  hp = online_dpo.OnlineDPOConfig(beta=0.3, label_smoothing=label_smoothing)
  batch = {"mask": jnp.asarray(mask), "ref_logprobs": jnp.asarray(ref),
           "pair_weight": jnp.asarray(np.concatenate([weight, weight]))}

  def online(lp):
    return online_dpo.online_dpo_loss(hp, {"policy": base.ModelOutputs(logprobs=lp)}, batch)

  keep = [0, 2, 3, 5]  # pairs 0 and 2: chosen rows 0, 2 and rejected rows 3, 5
  def offline(lp):
    sub = {"mask": jnp.asarray(mask[keep]), "ref_logprobs": jnp.asarray(ref[keep])}
    return dpo.dpo_loss(dpo.DPOConfig(beta=0.3, label_smoothing=label_smoothing),
                        {"policy": base.ModelOutputs(logprobs=lp[jnp.asarray(keep)])}, sub)

  (loss, metrics), grad = jax.value_and_grad(online, has_aux=True)(jnp.asarray(logp))
  (expected, expected_metrics), expected_grad = jax.value_and_grad(offline, has_aux=True)(
      jnp.asarray(logp))
  _close(loss, expected, 1e-6)
  chex.assert_trees_all_close(metrics, expected_metrics, rtol=1e-6, atol=1e-6)
  chex.assert_trees_all_close(grad, expected_grad, rtol=1e-6, atol=1e-6)
  assert np.all(np.asarray(grad)[[1, 4]] == 0)  # the tied pair gets no gradient


def test_no_informative_pair_gives_zero_loss_gradient_and_metrics():
  logp, ref, mask = _random_pairs_batch(1, 2)
  batch = {"mask": jnp.asarray(mask), "ref_logprobs": jnp.asarray(ref),
           "pair_weight": jnp.zeros(4)}
  f = lambda lp: online_dpo.online_dpo_loss(
      online_dpo.OnlineDPOConfig(), {"policy": base.ModelOutputs(logprobs=lp)}, batch)
  (loss, metrics), grad = jax.value_and_grad(f, has_aux=True)(jnp.asarray(logp))
  _close(loss, 0.0)
  _close(grad, np.zeros_like(logp))
  for value in metrics.values():
    assert np.isfinite(float(value)) and float(value) == 0.0


def test_online_dpo_registered_as_a_pairs_layout_rollout_objective():
  objective = objectives.get("online_dpo")
  assert objective.loss_fn is online_dpo.online_dpo_loss
  assert objective.prepare is online_dpo.online_dpo_prepare
  assert objective.batch == "rollouts" and objective.pairs_layout and objective.shuffles_pairs
  assert dict(objective.trains) == {"policy": ("logprobs",)}
  assert objective.needs_reference(online_dpo.OnlineDPOConfig())
  assert issubclass(objective.hparams, dpo.DPOConfig)
  with pytest.raises(ValueError, match=r"obj\.beta must be positive"):
    online_dpo.OnlineDPOConfig(beta=0.0).validate("obj")
  with pytest.raises(ValueError, match=r"obj\.label_smoothing"):
    online_dpo.OnlineDPOConfig(label_smoothing=0.5).validate("obj")


# ---------------------------------------------------------------- prepare + updates, tiny model

TINY = tfm.ModelConfig(vocab_size=16, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1,
                       head_dim=8, d_ff=32)


def _rollouts(n_groups=4, group_size=2, P=3, T=4, seed=0):
  """Each group's prompt is its own; rewards differ in every group but group 2."""
  rng = np.random.default_rng(seed)
  B = n_groups * group_size
  prompts = np.repeat(rng.integers(1, 16, (n_groups, P)), group_size, axis=0)
  rewards = rng.normal(size=(n_groups, group_size))
  rewards[2] = 0.25
  old = rng.normal(size=(B, T)) - 2.0
  return {
      "prompt_tokens": jnp.asarray(prompts, jnp.int32),
      "prompt_mask": jnp.asarray(np.ones((B, P), bool)),
      "completion_tokens": jnp.asarray(rng.integers(1, 16, (B, T)), jnp.int32),
      "mask": jnp.asarray(np.arange(T)[None, :] < rng.integers(1, T + 1, (B, 1))),
      "sampler_logprobs": jnp.asarray(old, jnp.float32),
      "old_logprobs": jnp.asarray(old, jnp.float32),
      "rewards": jnp.asarray(rewards.reshape(-1), jnp.float32),
      "advantages": jnp.asarray(rng.normal(size=B), jnp.float32),
  }


def test_prepare_and_updates_keep_pairs_aligned_across_minibatches():
  n_groups, group_size, minibatches = 4, 2, 2
  hp = online_dpo.OnlineDPOConfig(beta=0.5)
  objective = objectives.get("online_dpo")
  roles = {"policy": roles_lib.RoleSpec(TINY, optax.sgd(0.0)),
           "reference": roles_lib.RoleSpec(TINY)}
  binding = update.Binding(objective, hp, roles, {}, epochs=1, minibatches=minibatches)
  policy = tfm.init(TINY, jax.random.key(0))
  reference = tfm.init(TINY, jax.random.key(1))  # differs, so implicit rewards are not 0
  frozen = {"reference": reference}
  rollouts = _rollouts(n_groups, group_size)
  key = jax.random.key(2)

  @jax.jit
  def step(state, data):
    score = update.scorer(state_lib.params_of(state), frozen, binding, data)
    data = {**data, "ref_logprobs": score("reference", ("logprobs",)).logprobs}
    prepared, prepared_metrics = update.prepare(binding, data, score, group_size)
    state, metrics = update.updates(state, prepared, key, frozen, binding)
    return state, metrics, prepared, prepared_metrics

  state = state_lib.init_state({"policy": policy}, {"policy": optax.sgd(0.0)})
  _, metrics, prepared, prepared_metrics = step(state, rollouts)
  prepared = jax.tree.map(np.asarray, prepared)
  assert all(v.shape[0] == 2 * n_groups for v in prepared.values())
  _close(prepared_metrics["informative_pairs"], 3 / 4)
  _close(prepared["pair_weight"], [1, 1, 0, 1] * 2)

  # Every minibatch: its first half is the chosen rows of some groups, its second half the
  # rejected rows of the same groups, in the same order.
  orders = np.asarray(update.minibatch_orders(2 * n_groups, key, 1, minibatches, pairs=True))
  rewards = prepared["rewards"]
  expected_losses = []
  for mb in orders:
    chosen, rejected = np.split(mb, 2)
    assert (chosen < n_groups).all() and (rejected == chosen + n_groups).all()
    chex.assert_trees_all_equal(prepared["prompt_tokens"][chosen],
                                prepared["prompt_tokens"][rejected])
    assert np.all(rewards[chosen] >= rewards[rejected])
    # Learning rate 0: each update sees the initial params; its loss is offline DPO's on its
    # informative pairs, from an independent forward pass.
    sub = {k: jnp.asarray(v[mb]) for k, v in prepared.items()}
    logp = update.model_outputs(policy, sub, TINY, ("logprobs",)).logprobs
    ref = update.model_outputs(reference, sub, TINY, ("logprobs",)).logprobs
    keep = np.flatnonzero(prepared["pair_weight"][chosen] > 0)
    rows = np.concatenate([keep, keep + len(chosen)])
    loss, _ = dpo.dpo_loss(hp, {"policy": base.ModelOutputs(logprobs=logp[rows])},
                           {"mask": sub["mask"][rows], "ref_logprobs": ref[rows]})
    expected_losses.append(float(loss) if len(keep) else 0.0)
  _close(metrics["loss"], np.mean(expected_losses), 1e-5)
  assert float(metrics["loss"]) > 0
  # The sampler/old-logprob gaps are logged from the regrouped rows too.
  assert "sampler_gap_mean" in metrics and "old_gap_mean" in metrics


def test_online_dpo_updates_raise_the_margin_of_informative_pairs():
  group_size = 2
  hp = online_dpo.OnlineDPOConfig(beta=0.5)
  optimizer = optax.adam(3e-2)
  roles = {"policy": roles_lib.RoleSpec(TINY, optimizer), "reference": roles_lib.RoleSpec(TINY)}
  binding = update.Binding(objectives.get("online_dpo"), hp, roles, {}, epochs=2,
                           minibatches=2)
  params = tfm.init(TINY, jax.random.key(0))
  frozen = {"reference": params}
  rollouts = _rollouts(group_size=group_size, seed=3)

  @jax.jit
  def step(state, rng):
    score = update.scorer(state_lib.params_of(state), frozen, binding, rollouts)
    data = {**rollouts, "ref_logprobs": score("reference", ("logprobs",)).logprobs}
    prepared, _ = update.prepare(binding, data, score, group_size)
    state, metrics = update.updates(state, prepared, rng, frozen, binding)
    return state, metrics, prepared

  state = state_lib.init_state({"policy": jax.tree.map(jnp.copy, params)},
                               {"policy": optimizer})
  state, _, prepared = step(state, jax.random.key(0))
  for i in range(5):
    state, metrics, _ = step(state, jax.random.key(i + 1))
  trained = state["roles"]["policy"]["params"]
  logp = base.sequence_sum(update.model_outputs(trained, prepared, TINY,
                                                ("logprobs",)).logprobs, prepared["mask"])
  ref = base.sequence_sum(update.model_outputs(params, prepared, TINY,
                                               ("logprobs",)).logprobs, prepared["mask"])
  margin = hp.beta * np.asarray(jnp.subtract(*base.split_pairs(logp - ref)))
  informative = np.asarray(base.split_pairs(prepared["pair_weight"])[0]) > 0
  assert np.all(margin[informative] > 0.05), margin
  _close(margin[~informative], 0.0, 1e-5)  # a tied "pair" is one sample twice


# ---------------------------------------------------------------- sampling from the reference

def _rl_spec(sample_from, group_size=2):
  from rlalign.rewards import base as reward_base, verifiers
  from rlalign.rl import iteration
  from rlalign.sampling import sampler
  roles = {"policy": roles_lib.RoleSpec(TINY, optax.sgd(0.1)),
           "reference": roles_lib.RoleSpec(TINY)}
  binding = update.Binding(objectives.get("online_dpo"), online_dpo.OnlineDPOConfig(beta=0.5),
                           roles, {}, 1, 1)
  rl = iteration.RLConfig(batch_size=4 * group_size, group_size=group_size,
                          rewards=(reward_base.RewardTerm("length", settings=verifiers.LengthSettings()),),
                          sample_from=sample_from)
  config = sampler.SamplingConfig(max_new_tokens=4, temperature=1.0, stop_tokens=(2,))
  return iteration.IterationSpec(config, rl, binding, 0)


def test_sample_from_the_reference_samples_its_rollouts_and_trains_the_policy_on_them():
  """With ``sample_from="reference"`` the step is the plain step of a policy that holds the
  reference's weights as it samples: the same rollouts, so the same update of the policy's
  own weights. (The reference's weights differ from the policy's, so its samples do too.)"""
  from rlalign.rl import iteration
  policy, reference = tfm.init(TINY, jax.random.key(0)), tfm.init(TINY, jax.random.key(1))
  batch = {"prompt_tokens": jnp.asarray(np.tile([[1, 5, 6]], (4, 1))),
           "prompt_mask": jnp.ones((4, 3), bool),
           "answer_tokens": jnp.zeros((4, 2), jnp.int32), "answer_mask": jnp.ones((4, 2), bool)}
  rng = jax.random.key(7)
  state = state_lib.init_state({"policy": policy}, {"policy": optax.sgd(0.1)})
  spec = _rl_spec("reference")
  spec.check()
  got, metrics = jax.jit(lambda s, f: iteration.rl_step(s, batch, rng, f, spec))(
      state, {"reference": reference})
  # The reference's rollouts, as the step draws them, scored and learned by the plain path.
  plain = _rl_spec("")
  step_rng = jax.random.fold_in(rng, 0)
  sample_rng, learn_rng = jax.random.split(step_rng)
  rollouts = iteration.rollout(reference, batch, sample_rng, plain)
  scores = iteration.score(rollouts, {"policy": policy}, {"reference": reference}, plain,
                           jax.random.split(jax.random.fold_in(jax.random.split(step_rng, 3)[2],
                                                               1))[0])
  want, want_metrics = iteration.learn(state, rollouts, scores, learn_rng,
                                       {"reference": reference}, plain)
  chex.assert_trees_all_close(got["roles"]["policy"]["params"],
                              want["roles"]["policy"]["params"], rtol=1e-6, atol=1e-6)
  _close(metrics["loss"], want_metrics["loss"])


def test_sample_from_is_refused_where_the_loss_reads_the_samplers_log_probs():
  from rlalign.rl import iteration
  spec = _rl_spec("reference")
  grpo = update.Binding(objectives.get("grpo"), objectives.get("grpo").hparams(),
                        spec.binding.roles, {}, 1, 1)
  import dataclasses
  with pytest.raises(ValueError, match="reads the sampler's log-probs as the policy's"):
    dataclasses.replace(spec, binding=grpo).check()
  only_policy = update.Binding(spec.binding.objective, spec.binding.hparams,
                               {"policy": spec.binding.roles["policy"]}, {}, 1, 1)
  with pytest.raises(ValueError, match="needs a reference role|does not have"):
    iteration.IterationSpec(spec.sampling, spec.rl, only_policy, 0).check()
