"""PPO with a critic and GAE: GAE against a numpy double loop, the loss and value clipping
against hand arithmetic, prepare with a fake critic, and one real PPO iteration."""

import dataclasses
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlalign import objectives
from rlalign.objectives import advantages as adv_lib
from rlalign.objectives import base, kl, ppo
from tests.configs import load_config


def _close(x, expected, tol=1e-6):
  chex.assert_trees_all_close(x, np.asarray(expected, np.float32), rtol=tol, atol=tol)


# ---------------------------------------------------------------- GAE


def gae_by_hand(rewards, values, mask, gamma, lam):
  """Independent of advantages.gae: for each real token, the discounted sum of TD errors
  over the rest of its row, with V = 0 after the row's last real token."""
  B, T = rewards.shape
  adv = np.zeros((B, T))
  ret = np.zeros((B, T))
  for b in range(B):
    n = int(mask[b].sum())  # rows are a real prefix, then padding
    assert mask[b, :n].all() and not mask[b, n:].any()
    for t in range(n):
      total = 0.0
      for k in range(t, n):
        next_value = values[b, k + 1] if k + 1 < n else 0.0
        delta = rewards[b, k] + gamma * next_value - values[b, k]
        total += (gamma * lam) ** (k - t) * delta
      adv[b, t] = total
      ret[b, t] = total + values[b, t]
  return adv, ret


def _random_episode_batch(seed=0, B=5, T=7):
  rng = np.random.default_rng(seed)
  lengths = np.array([T, 3, 1, 0, 5])[:B]  # a full row, masked tails, an empty row
  mask = np.arange(T)[None, :] < lengths[:, None]
  rewards = rng.normal(size=(B, T))
  values = rng.normal(size=(B, T))
  # Padding carries garbage that must not leak into any real position.
  rewards[~mask] = 100.0
  values[~mask] = -50.0
  return rewards, values, mask


@pytest.mark.parametrize("gamma,lam", [(0.9, 0.8), (1.0, 0.95), (0.7, 0.0), (1.0, 1.0)])
def test_gae_matches_numpy_double_loop(gamma, lam):
  rewards, values, mask = _random_episode_batch()
  adv, ret = jax.jit(adv_lib.gae, static_argnums=(3, 4))(
      jnp.asarray(rewards, jnp.float32), jnp.asarray(values, jnp.float32), jnp.asarray(mask),
      gamma, lam)
  exp_adv, exp_ret = gae_by_hand(rewards, values, mask, gamma, lam)
  chex.assert_shape((adv, ret), (5, 7))
  _close(adv, exp_adv, tol=1e-5)
  _close(ret, exp_ret, tol=1e-5)
  assert np.all(np.asarray(adv)[~mask] == 0) and np.all(np.asarray(ret)[~mask] == 0)


def test_gae_special_cases_by_hand():
  # One row of 3 real tokens and one padding column; reward 1 at the last real token.
  r = jnp.array([[0.0, 0.0, 1.0, 7.0]])
  v = jnp.array([[0.2, 0.5, 0.6, 3.0]])
  m = jnp.array([[True, True, True, False]])
  # gamma = lam = 1: Monte Carlo return minus V, R_t = 1 at every real token.
  adv, ret = adv_lib.gae(r, v, m, 1.0, 1.0)
  _close(adv, [[0.8, 0.5, 0.4, 0.0]])
  _close(ret, [[1.0, 1.0, 1.0, 0.0]])
  # lam = 0: one-step TD errors r_t + gamma V_{t+1} - V_t, V after the last real token is 0.
  adv, ret = adv_lib.gae(r, v, m, 0.5, 0.0)
  _close(adv, [[0.5 * 0.5 - 0.2, 0.5 * 0.6 - 0.5, 1.0 - 0.6, 0.0]])
  _close(ret, [[0.25, 0.3, 1.0, 0.0]])


# ---------------------------------------------------------------- per-token rewards


def test_token_rewards_put_the_sequence_reward_at_the_last_real_token():
  mask = jnp.array([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], bool)
  old = jnp.array([[-1.0, -2.0, -3.0, -4.0], [-0.5, -0.5, -0.5, -0.5], [-1.0] * 4])
  ref = jnp.array([[-1.5, -1.0, 0.0, 0.0], [-0.5, -1.5, -0.5, 0.0], [0.0] * 4])
  batch = {"mask": mask, "rewards": jnp.array([2.0, -1.0, 5.0]), "old_logprobs": old,
           "ref_logprobs": ref}
  _close(ppo.token_rewards(ppo.PPOConfig(), batch),
         [[0, 2, 0, 0], [0, 0, 0, -1], [0, 0, 0, 0]])  # the empty row gets nothing
  # kl_in_reward = 0.1: -0.1 (old - ref) on every real token, by hand.
  _close(ppo.token_rewards(ppo.PPOConfig(kl_in_reward=0.1), batch),
         [[-0.1 * 0.5, 2.0 + 0.1 * 1.0, 0, 0],
          [0.0, -0.1 * 1.0, 0.0, -1.0 - 0.1 * -0.5],
          [0, 0, 0, 0]])


# ---------------------------------------------------------------- prepare with a fake critic


def _rollout_batch(seed=1):
  rewards_tok, values, mask = _random_episode_batch(seed)
  rng = np.random.default_rng(seed + 10)
  B, T = mask.shape
  old = -rng.uniform(0.1, 3.0, size=(B, T))
  ref = old + rng.normal(scale=0.3, size=(B, T))
  batch = {
      "mask": jnp.asarray(mask),
      "rewards": jnp.asarray(rng.normal(size=B), jnp.float32),
      "advantages": jnp.zeros(B, jnp.float32),  # the group estimator's, to be replaced
      "old_logprobs": jnp.asarray(old, jnp.float32),
      "ref_logprobs": jnp.asarray(ref, jnp.float32),
  }
  return batch, values


def _seq_rewards_by_hand(batch, beta):
  mask = np.asarray(batch["mask"])
  r = np.zeros(mask.shape)
  r[mask] = -beta * (np.asarray(batch["old_logprobs"]) - np.asarray(batch["ref_logprobs"]))[mask]
  for b in range(mask.shape[0]):
    n = int(mask[b].sum())
    if n:
      r[b, n - 1] += float(batch["rewards"][b])
  return r


@pytest.mark.parametrize("whiten", [True, False])
def test_prepare_scores_the_critic_and_writes_gae(whiten):
  batch, values = _rollout_batch()
  calls = []

  def score(slot, fields):
    calls.append((slot, tuple(fields)))
    return base.ModelOutputs(values=jnp.asarray(values, jnp.float32))

  hp = ppo.PPOConfig(gamma=0.9, lam=0.8, kl_in_reward=0.05, whiten_advantages=whiten)
  out = ppo.ppo_prepare(hp, batch, score)
  assert calls == [("critic", ("values",))]
  mask = np.asarray(batch["mask"])
  exp_adv, exp_ret = gae_by_hand(_seq_rewards_by_hand(batch, 0.05), np.where(mask, values, 0),
                                 mask, 0.9, 0.8)
  if whiten:
    real = exp_adv[mask]
    exp_adv = np.where(mask, (exp_adv - real.mean()) / real.std(), 0.0)
  chex.assert_shape((out["advantages"], out["returns"], out["old_values"]), mask.shape)
  _close(out["advantages"], exp_adv, tol=1e-4)
  _close(out["returns"], exp_ret, tol=1e-5)  # returns are never whitened
  _close(out["old_values"], np.where(mask, values, 0.0))
  for key in ("rewards", "old_logprobs", "ref_logprobs", "mask"):
    assert out[key] is batch[key]
  if whiten:
    real = np.asarray(out["advantages"])[mask]
    assert abs(real.mean()) < 1e-5 and abs(real.std() - 1) < 1e-4


# ---------------------------------------------------------------- the loss, by hand

# A [2, 3] batch; token (0, 2) is masked and carries values that would dominate if it counted.
MASK = np.array([[True, True, False], [True, True, True]])
RATIOS = np.array([[1.1, 1.5, 2.0], [0.9, 0.5, 1.3]])
OLD = np.array([[-1.0, -2.0, -0.5], [-1.5, -0.7, -3.0]])
ADVS = np.array([[1.0, 1.0, 1.0], [-2.0, -2.0, 0.5]])
REF_OVER_PI = np.array([[1.0, 2.0, 0.5], [0.5, 1.0, 4.0]])
ENTROPY = np.array([[0.5, 1.0, 2.0], [1.5, 0.2, 0.3]])
VALUES = np.array([[0.5, 1.0, 9.0], [0.0, -0.5, 0.3]])
OLD_VALUES = np.array([[0.4, 0.5, 0.0], [0.0, 0.0, 0.0]])
RETURNS = np.array([[1.0, 0.0, 0.0], [1.0, -1.0, 0.0]])
# Clipped surrogate per token (eps 0.2), by hand:
#   (0,0) r=1.1 A=1 -> -1.1; (0,1) r=1.5 A=1 -> -1.2 clipped; (0,2) masked
#   (1,0) r=0.9 A=-2 -> 1.8; (1,1) r=0.5 A=-2 -> 1.6 clipped; (1,2) r=1.3 A=0.5 -> -0.6 clipped
PG = np.array([[-1.1, -1.2, 0.0], [1.8, 1.6, -0.6]])
PG_CLIPPED = np.array([[0, 1, 0], [0, 1, 1]], bool)
# Value loss with vf_clip 0.2, clip(V, V_old +- 0.2) then 0.5 max of the two squares:
#   (0,0) V=0.5 inside [0.2, 0.6]: 0.5 (0.5-1)^2 = 0.125
#   (0,1) V=1.0 -> 0.7: max(1.0, 0.49) = 1.0 -> 0.5         (unclipped branch)
#   (1,0) V=0 = V_old: 0.5 (0-1)^2 = 0.5
#   (1,1) V=-0.5 -> -0.2: max(0.25, 0.64) = 0.64 -> 0.32   (clipped branch: no gradient)
#   (1,2) V=0.3 -> 0.2: max(0.09, 0.04) = 0.09 -> 0.045
VF = np.array([[0.125, 0.5, 0.0], [0.5, 0.32, 0.045]])
VF_UNCLIPPED = np.array([[0.125, 0.5, 0.0], [0.5, 0.125, 0.045]])
N = 5


def _k3(q):
  return q - math.log(q) - 1


K3 = np.array([[_k3(q) for q in row] for row in REF_OVER_PI])


def _loss_inputs():
  logp = jnp.asarray(OLD + np.log(RATIOS), jnp.float32)
  outputs = {"policy": base.ModelOutputs(logprobs=logp,
                                         entropy=jnp.asarray(ENTROPY, jnp.float32)),
             "critic": base.ModelOutputs(values=jnp.asarray(VALUES, jnp.float32))}
  batch = {"mask": jnp.asarray(MASK), "old_logprobs": jnp.asarray(OLD, jnp.float32),
           "ref_logprobs": logp + jnp.log(jnp.asarray(REF_OVER_PI, jnp.float32)),
           "advantages": jnp.asarray(ADVS, jnp.float32),
           "returns": jnp.asarray(RETURNS, jnp.float32),
           "old_values": jnp.asarray(OLD_VALUES, jnp.float32)}
  return outputs, batch


def _token_mean(x):
  return float(np.sum(np.where(MASK, x, 0.0)) / N)


def test_value_loss_clipping_by_hand():
  vf, clipped = ppo.value_loss(jnp.asarray(VALUES), jnp.asarray(OLD_VALUES),
                               jnp.asarray(RETURNS), 0.2)
  _close(np.where(MASK, vf, 0.0), VF)
  np.testing.assert_array_equal(np.asarray(clipped) & MASK, [[0, 0, 0], [0, 1, 0]])
  vf0, clipped0 = ppo.value_loss(jnp.asarray(VALUES), jnp.asarray(OLD_VALUES),
                                 jnp.asarray(RETURNS), 0.0)
  _close(np.where(MASK, vf0, 0.0), VF_UNCLIPPED)
  assert not np.asarray(clipped0).any()


def test_ppo_loss_token_aggregation_and_metrics():
  outputs, batch = _loss_inputs()
  hp = ppo.PPOConfig(vf_coef=0.5, vf_clip=0.2, entropy_coef=0.01, kl_coef=0.1)
  loss, metrics = ppo.ppo_loss(hp, outputs, batch)
  chex.assert_shape(loss, ())
  expected = _token_mean(PG + 0.5 * VF - 0.01 * ENTROPY + 0.1 * K3)
  _close(loss, expected, tol=1e-5)
  _close(metrics["pg_loss"], _token_mean(PG), tol=1e-5)
  _close(metrics["pg_loss"], (-1.1 - 1.2 + 1.8 + 1.6 - 0.6) / 5, tol=1e-5)
  _close(metrics["vf_loss"], (0.125 + 0.5 + 0.5 + 0.32 + 0.045) / 5)
  _close(metrics["vf_clip_frac"], 1 / 5)
  _close(metrics["clip_frac"], 3 / 5)
  _close(metrics["kl"], _token_mean(K3), tol=1e-5)
  _close(metrics["entropy"], _token_mean(ENTROPY))
  _close(metrics["value_mean"], (0.5 + 1.0 + 0.0 - 0.5 + 0.3) / 5)
  _close(metrics["return_mean"], (1.0 + 0.0 + 1.0 - 1.0 + 0.0) / 5)
  ret, res = RETURNS[MASK], (RETURNS - VALUES)[MASK]
  _close(metrics["explained_variance"], 1 - res.var() / ret.var(), tol=1e-5)


def test_ppo_loss_sequence_aggregation_and_no_value_clip():
  outputs, batch = _loss_inputs()
  hp = ppo.PPOConfig(vf_coef=2.0, vf_clip=0.0, aggregation="sequence")
  loss, metrics = ppo.ppo_loss(hp, outputs, batch)
  per_token = PG + 2.0 * VF_UNCLIPPED
  expected = ((per_token[0, 0] + per_token[0, 1]) / 2 + per_token[1].sum() / 3) / 2
  _close(loss, expected, tol=1e-5)
  _close(metrics["vf_clip_frac"], 0.0)


def test_ppo_loss_kl_coef_zero_ignores_the_reference():
  outputs, batch = _loss_inputs()
  hp = ppo.PPOConfig(vf_coef=0.0)
  loss, _ = ppo.ppo_loss(hp, outputs, batch)
  loss_far, _ = ppo.ppo_loss(hp, outputs, dict(batch, ref_logprobs=batch["ref_logprobs"] + 5))
  _close(loss, _token_mean(PG), tol=1e-5)
  _close(loss_far, loss)


def test_ppo_gradients_reach_each_slot_only_through_its_own_terms():
  outputs, batch = _loss_inputs()
  hp = ppo.PPOConfig(vf_coef=0.5, vf_clip=0.2)

  def loss_of(logp, values):
    outs = {"policy": outputs["policy"]._replace(logprobs=logp),
            "critic": outputs["critic"]._replace(values=values)}
    return ppo.ppo_loss(hp, outs, batch)[0]

  g_logp, g_values = jax.grad(loss_of, argnums=(0, 1))(outputs["policy"].logprobs,
                                                       outputs["critic"].values)
  # d/dlogp of -r A / N on unclipped real tokens; clipped and masked tokens get 0.
  _close(g_logp, np.where(MASK & ~PG_CLIPPED, -RATIOS * ADVS / N, 0.0), tol=1e-5)
  # d/dV of vf_coef 0.5 (V - R)^2 / N = 0.5 (V - R) / N, except where the clipped branch wins
  # (token (1, 1)) and on the masked token.
  expected = np.where(MASK, 0.5 * (VALUES - RETURNS) / N, 0.0)
  expected[1, 1] = 0.0
  _close(g_values, expected, tol=1e-6)


# ---------------------------------------------------------------- registration and config


def test_ppo_registered_with_both_slots_and_prepare():
  objective = objectives.get("ppo")
  assert objective.loss_fn is ppo.ppo_loss and objective.prepare is ppo.ppo_prepare
  assert objective.hparams is ppo.PPOConfig and objective.batch == "rollouts"
  assert dict(objective.trains) == {"policy": ("logprobs", "entropy"), "critic": ("values",)}
  assert not objective.needs_reference(ppo.PPOConfig())
  assert objective.needs_reference(ppo.PPOConfig(kl_coef=0.01))
  assert objective.needs_reference(ppo.PPOConfig(kl_in_reward=0.01))


@pytest.mark.parametrize("field,value", [("gamma", 1.5), ("lam", -0.1), ("clip_eps", 0.0),
                                         ("vf_clip", -1.0), ("vf_coef", -0.5),
                                         ("kl_in_reward", -0.1), ("kl_coef", -1.0),
                                         ("kl_estimator", "k9"), ("aggregation", "mean")])
def test_ppo_config_validate_names_the_field(field, value):
  with pytest.raises(ValueError, match=rf"phases\.rl\.objective\.{field}"):
    ppo.PPOConfig(**{field: value}).validate("phases.rl.objective")
  ppo.PPOConfig().validate("phases.rl.objective")


@pytest.mark.parametrize("arg", ["", "smoke"])
def test_ppo_addition_config_types_and_trains_policy_and_critic(arg):
  from rlalign import config as config_lib
  config = load_config("ppo_addition", arg)
  config.data.data_dir = "/unused"
  cfg = config_lib.from_config_dict(config)
  cfg.validate()
  rl = cfg.phase_configs["rl"]
  assert rl.kind == "rl" and rl.objective.name == "ppo"
  assert rl.trained_roles == ("policy", "critic") and rl.optimizer is None
  critic = cfg.role_configs["critic"]
  assert cfg.role_model("critic").heads == ("scalar",) and critic.trainable
  assert critic.weights.source == "role" and critic.weights.role == "policy"
  assert not cfg.role_configs["reference"].trainable
  # The same task and warm start as the GRPO job.
  grpo_config = load_config("grpo_addition", arg)
  grpo_config.data.data_dir = "/unused"
  grpo_cfg = config_lib.from_config_dict(grpo_config)
  assert cfg.phase_configs["warm_start"] == grpo_cfg.phase_configs["warm_start"]
  assert (cfg.model, cfg.data, cfg.sampling, cfg.seed) == (grpo_cfg.model, grpo_cfg.data,
                                                           grpo_cfg.sampling, grpo_cfg.seed)
  assert cfg.role_configs["policy"] == grpo_cfg.role_configs["policy"]


# ---------------------------------------------------------------- one real PPO iteration


def _iteration_setup(epochs=2, minibatches=2):
  from rlalign.data import pipeline, tokenizer as tok_lib
  from rlalign.models import transformer as tfm
  from rlalign.rewards.base import RewardTerm
  from rlalign.rl import iteration, update
  from rlalign.rl import roles as roles_lib
  from rlalign.rl import state as state_lib
  from rlalign.sampling import SamplingConfig

  tokenizer = tok_lib.CharTokenizer(tok_lib.ADDITION_ALPHABET)
  data = pipeline.DataConfig(data_dir="unused", max_prompt_len=8, max_answer_len=4)
  model = tfm.ModelConfig(vocab_size=16, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1,
                          head_dim=16, d_ff=64)
  critic_model = dataclasses.replace(model, heads=("scalar",))
  problems = [("1+2=", "3"), ("12+3=", "42"), ("5+5=", "01"), ("9+91=", "001"),
              ("7+1=", "8"), ("33+1=", "43"), ("4+4=", "8"), ("2+22=", "42")]
  rows = [pipeline.encode_example({"prompt": p.encode(), "answer": a.encode(),
                                   "demonstration": b""}, tokenizer, data) for p, a in problems]
  encoded = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
  batches = [{k: v[i:i + 4] for k, v in encoded.items()} for i in (0, 4, 2, 1)]

  optimizer = lambda lr: state_lib.make_optimizer(state_lib.OptimizerConfig(learning_rate=lr))
  roles = {"policy": roles_lib.RoleSpec(model, optimizer(1e-2)),
           "reference": roles_lib.RoleSpec(model),
           "critic": roles_lib.RoleSpec(critic_model, optimizer(1e-2))}
  objective = objectives.get("ppo")
  # "stopped" varies from row to row even for a random policy, and the KL against a
  # reference of other weights gives every token a reward, so the critic has targets.
  hparams = ppo.PPOConfig(gamma=1.0, lam=0.9, kl_in_reward=0.1, kl_coef=1e-3)
  rl = iteration.RLConfig(batch_size=16, group_size=4, epochs=epochs, minibatches=minibatches,
                          rewards=(RewardTerm("stopped"),))
  binding = update.Binding(objective, hparams, roles, {}, rl.epochs, rl.minibatches)
  spec = iteration.IterationSpec(
      SamplingConfig(max_new_tokens=4, stop_tokens=(tokenizer.eos_id,)), rl, binding)

  policy = tfm.init(model, jax.random.key(0))
  # The critic as runtime._copied_weights builds it: the policy's backbone, a zero head.
  fresh = tfm.init(critic_model, jax.random.key(1))
  critic = {k: (policy[k] if k in policy else fresh[k]) for k in fresh}
  critic["scalar_head"] = jax.tree.map(jnp.zeros_like, fresh["scalar_head"])
  frozen = {"reference": tfm.init(model, jax.random.key(2))}
  state = state_lib.init_state({"policy": policy, "critic": critic}, spec.optimizers)
  state = jax.tree.map(jnp.array, state)  # own buffers: the step donates the state
  return spec, state, frozen, batches


def test_ppo_iteration_compiles_once_and_trains_policy_and_critic():
  from rlalign.profiling import count_compilations
  from rlalign.rl import iteration

  spec, state, frozen, batches = _iteration_setup(epochs=2, minibatches=2)
  assert set(spec.binding.trained_roles) == {"policy", "critic"}
  before = jax.tree.map(np.asarray, state["roles"])
  step = iteration.make_rl_step(spec)
  rng = jax.random.key(3)
  with count_compilations() as compiles:
    for batch in batches:
      state, metrics = step(state, batch, rng, frozen)
    jax.block_until_ready(state)
  assert compiles.count == 1
  assert int(state["step"]) == len(batches)
  after = state["roles"]

  def changed(a, b):
    return any(not np.allclose(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

  assert changed(before["policy"]["params"], after["policy"]["params"])
  assert changed(before["critic"]["params"]["layers"], after["critic"]["params"]["layers"])
  head = after["critic"]["params"]["scalar_head"]
  assert np.abs(np.asarray(head["w"])).max() > 0 and float(head["b"]) != 0.0
  # The critic is a role of its own: its backbone no longer equals the policy's.
  assert changed(after["policy"]["params"]["layers"], after["critic"]["params"]["layers"])
  # Each role's own optimizer ran epochs x minibatches updates per step.
  for role in ("policy", "critic"):
    counts = [x for x in jax.tree.leaves(after[role]["opt_state"])
              if x.ndim == 0 and jnp.issubdtype(x.dtype, jnp.integer)]
    assert counts and all(int(c) == 4 * len(batches) for c in counts)
  assert set(metrics) >= {"loss", "pg_loss", "vf_loss", "vf_clip_frac", "clip_frac", "kl",
                          "entropy", "value_mean", "return_mean", "explained_variance",
                          "policy/grad_norm", "critic/grad_norm", "reward"}
  assert all(np.isfinite(float(v)) for v in metrics.values())
  assert float(metrics["critic/grad_norm"]) > 0


def test_ppo_learn_uses_the_critic_values_before_the_update():
  """With one update, the loss's value metrics are the pre-update critic's, so they must
  equal the critic scored by hand on the same rollouts, and the returns GAE by hand."""
  from rlalign.rl import iteration, update
  from rlalign.rl import state as state_lib

  spec, state, frozen, batches = _iteration_setup(epochs=1, minibatches=1)
  # A non-zero head, so the critic's values are not trivially 0.
  head = state["roles"]["critic"]["params"]["scalar_head"]
  state["roles"]["critic"]["params"]["scalar_head"] = {
      "w": jnp.full_like(head["w"], 0.05), "b": jnp.full_like(head["b"], 0.3)}
  trained = state_lib.params_of(state)
  rollouts = jax.jit(lambda p, b, r: iteration.rollout(p, b, r, spec))(
      trained["policy"], batches[0], jax.random.key(5))
  scores = jax.jit(lambda ro, t, f: iteration.score(ro, t, f, spec))(rollouts, trained, frozen)
  data = {"prompt_tokens": rollouts["prompt_tokens"], "prompt_mask": rollouts["prompt_mask"],
          "completion_tokens": rollouts["completion_tokens"],
          "mask": rollouts["completion_mask"]}
  critic = update.model_outputs(trained["critic"], data, spec.binding.roles["critic"].model,
                                ("values",))
  ref = update.model_outputs(frozen["reference"], data, spec.model, ("logprobs",))
  mask = np.asarray(data["mask"])
  values = np.where(mask, np.asarray(critic.values), 0.0)
  hand_batch = {"mask": data["mask"], "rewards": scores["stopped"],
                "old_logprobs": rollouts["logprobs"], "ref_logprobs": ref.logprobs}
  _, returns = gae_by_hand(_seq_rewards_by_hand(hand_batch, spec.binding.hparams.kl_in_reward),
                           values, mask, spec.binding.hparams.gamma, spec.binding.hparams.lam)
  _, metrics = jax.jit(lambda s, ro, sc, r, f: iteration.learn(s, ro, sc, r, f, spec))(
      state, rollouts, scores, jax.random.key(6), frozen)
  n = mask.sum()
  _close(metrics["value_mean"], values.sum() / n, tol=1e-5)
  _close(metrics["return_mean"], returns.sum() / n, tol=1e-4)
  _close(metrics["vf_loss"], 0.5 * np.sum(np.where(mask, (values - returns) ** 2, 0)) / n,
         tol=1e-4)
  _close(metrics["vf_clip_frac"], 0.0)  # V == V_old on the only update
